"""CamVid distilled student: the baseline student plus pixel KD.

Train the teacher first (configs/camvid_teacher.py, same variant) and give
its workdir:

  # Published-style recipe (an accelerator): DeepLabV3-ResNet-101 ->
  # ResNet-18, KD weight 1 at T=1 on top of cross-entropy (CIRKD's KD).
  python -m kdseg.main --config configs/camvid_distill.py \
      --config.data.kwargs.manual_dir=../shared/camvid \
      --config.teacher.checkpoint=/tmp/camvid_teacher --workdir /tmp/camvid_distill

  # A 2-core CPU (about 15 minutes).
  python -m kdseg.main --config configs/camvid_distill.py:cpu \
      --config.data.kwargs.manual_dir=../shared/camvid \
      --config.teacher.checkpoint=/tmp/camvid_teacher_cpu --workdir /tmp/camvid_distill_cpu

The temperature is a schedule: the CPU recipe anneals it from 4 to 1 (soft
targets early, sharp ones late); the published recipe keeps T=1.
"""

from configs import recipes


def get_config(variant: str = ''):
  variant = recipes.check_variant(variant, 'configs/camvid_distill.py')
  return recipes.distill_config('camvid', variant)
