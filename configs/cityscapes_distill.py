"""Cityscapes (19 training classes) distilled student: the baseline student plus pixel KD.

Train the teacher first (configs/cityscapes_teacher.py, same variant) and give
its workdir:

  # Published-style recipe (an accelerator): DeepLabV3-ResNet-101 ->
  # ResNet-18, KD weight 1 at T=1 on top of cross-entropy (CIRKD's KD).
  python -m kdseg.main --config configs/cityscapes_distill.py \
      --config.data.kwargs.manual_dir=DIR \
      --config.teacher.checkpoint=/tmp/cityscapes_teacher --workdir /tmp/cityscapes_distill

  # A 2-core CPU (tens of minutes).
  python -m kdseg.main --config configs/cityscapes_distill.py:cpu \
      --config.data.kwargs.manual_dir=DIR \
      --config.teacher.checkpoint=/tmp/cityscapes_teacher_cpu --workdir /tmp/cityscapes_distill_cpu

The temperature is a schedule: the CPU recipe anneals it from 4 to 1 (soft
targets early, sharp ones late); the published recipe keeps T=1.
"""

from configs import recipes


def get_config(variant: str = ''):
  variant = recipes.check_variant(variant, 'configs/cityscapes_distill.py')
  return recipes.distill_config('cityscapes', variant)
