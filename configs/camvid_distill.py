"""CamVid distilled student: the baseline student plus distillation.

Train the teacher first (configs/camvid_teacher.py, same variant) and give
its workdir:

  # Published-style recipe (an accelerator): DeepLabV3-ResNet-101 ->
  # ResNet-18, KD weight 1 at T=1 on top of cross-entropy (CIRKD's KD).
  python -m kdseg.main --config configs/camvid_distill.py \
      --config.data.kwargs.manual_dir=../shared/camvid \
      --config.teacher.checkpoint=/tmp/camvid_teacher --workdir /tmp/camvid_distill

  # A 2-core CPU (about 8.5 minutes idle): cross-entropy plus DIST (correlation
  # of the class probabilities, across classes and pixels), the teacher run
  # on every training crop; pixel KD did not help this student (RESULTS.md).
  python -m kdseg.main --config configs/camvid_distill.py:cpu \
      --config.data.kwargs.manual_dir=../shared/camvid \
      --config.teacher.checkpoint=/tmp/camvid_teacher_cpu --workdir /tmp/camvid_distill_cpu

The temperature is a schedule (`loss.temperature`); both recipes keep T=1.
"""

from configs import recipes


def get_config(variant: str = ''):
  variant = recipes.check_variant(variant, 'configs/camvid_distill.py')
  return recipes.distill_config('camvid', variant)
