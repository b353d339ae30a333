"""Oxford-IIIT Pet (trimaps: pet, background, border) distilled student: the baseline student plus pixel KD.

Train the teacher first (configs/pet_teacher.py, same variant) and give
its workdir:

  # Published-style recipe (an accelerator): DeepLabV3-ResNet-101 ->
  # ResNet-18, KD weight 1 at T=1 on top of cross-entropy (CIRKD's KD).
  python -m kdseg.main --config configs/pet_distill.py \
      --config.teacher.checkpoint=/tmp/pet_teacher --workdir /tmp/pet_distill

  # A 2-core CPU (tens of minutes).
  python -m kdseg.main --config configs/pet_distill.py:cpu \
      --config.teacher.checkpoint=/tmp/pet_teacher_cpu --workdir /tmp/pet_distill_cpu

The temperature is a schedule: the CPU recipe anneals it from 4 to 1 (soft
targets early, sharp ones late); the published recipe keeps T=1.
"""

from configs import recipes


def get_config(variant: str = ''):
  variant = recipes.check_variant(variant, 'configs/pet_distill.py')
  return recipes.distill_config('oxford_iiit_pet', variant)
