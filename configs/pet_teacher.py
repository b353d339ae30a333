"""Oxford-IIIT Pet (trimaps: pet, background, border) teacher: supervised training of the model students learn from.

  # Published-style recipe (an accelerator): DeepLabV3-ResNet-101 with its
  # aux head, 512x512 images, 448x448 crops, 20k steps, SGD 0.02 with poly decay, batch 16. Published
  # teachers start from ImageNet weights: convert them with
  # `python -m kdseg.convert` and add `--config.model.init_from=DIR`.
  python -m kdseg.main --config configs/pet_teacher.py \
      --workdir /tmp/pet_teacher

  # A 2-core CPU: a small DeepLabV3 at 128x128 images, 112x112 crops, 3000 steps of 8
  # images (tens of minutes).
  python -m kdseg.main --config configs/pet_teacher.py:cpu \
      --workdir /tmp/pet_teacher_cpu

The data come from the TFDS catalog (`oxford_iiit_pet`), downloaded by TFDS
on first use; offline, put `images.tar.gz` and `annotations.tar.gz` in a
folder and add `--config.data.kwargs.manual_dir=DIR`. Images vary in size:
every example is resized to a square (`config.data.image_size`).
"""

from configs import recipes


def get_config(variant: str = ''):
  variant = recipes.check_variant(variant, 'configs/pet_teacher.py')
  return recipes.teacher_config('oxford_iiit_pet', variant)
