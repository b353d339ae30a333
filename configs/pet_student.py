"""Oxford-IIIT Pet (trimaps: pet, background, border) baseline student: trained on the labels alone.

The reference its distilled twin (configs/pet_distill.py) is measured
against: same data, schedule and model, no teacher.

  # Published-style recipe (an accelerator): DeepLabV3-ResNet-18, as CIRKD.
  python -m kdseg.main --config configs/pet_student.py \
      --workdir /tmp/pet_student

  # A 2-core CPU: a small LR-ASPP at 128x128 images, 112x112 crops, 1500 steps of 8 images
  # (tens of minutes).
  python -m kdseg.main --config configs/pet_student.py:cpu \
      --workdir /tmp/pet_student_cpu

Other students: e.g. `--config.model.name=deeplabv3_mobilenet_v2` or
`lraspp_mobilenet_v3_large` (`kdseg.models.available()` lists them all).
The data come from the TFDS catalog (`oxford_iiit_pet`), downloaded by TFDS
on first use; offline, put `images.tar.gz` and `annotations.tar.gz` in a
folder and add `--config.data.kwargs.manual_dir=DIR`. Images vary in size:
every example is resized to a square (`config.data.image_size`).
"""

from configs import recipes


def get_config(variant: str = ''):
  variant = recipes.check_variant(variant, 'configs/pet_student.py')
  return recipes.student_config('oxford_iiit_pet', variant)
