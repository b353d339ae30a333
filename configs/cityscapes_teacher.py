"""Cityscapes (19 training classes) teacher: supervised training of the model students learn from.

  # Published-style recipe (an accelerator): DeepLabV3-ResNet-101 with its
  # aux head, 512x1024 crops of the 1024x2048 frames, 40k steps, SGD 0.02 with poly decay, batch 16. Published
  # teachers start from ImageNet weights: convert them with
  # `python -m kdseg.convert` and add `--config.model.init_from=DIR`.
  python -m kdseg.main --config configs/cityscapes_teacher.py \
      --config.data.kwargs.manual_dir=DIR \
      --workdir /tmp/cityscapes_teacher

  # A 2-core CPU: a small DeepLabV3 at 1/8 resolution (128x256 frames, 128x128 crops), 3000 steps of 8
  # images (tens of minutes).
  python -m kdseg.main --config configs/cityscapes_teacher.py:cpu \
      --config.data.kwargs.manual_dir=DIR \
      --workdir /tmp/cityscapes_teacher_cpu

Cityscapes needs a manual download: DIR holds `leftImg8bit_trainvaltest.zip`
and `gtFine_trainvaltest.zip` from cityscapes-dataset.com; TFDS prepares them
once.
"""

from configs import recipes


def get_config(variant: str = ''):
  variant = recipes.check_variant(variant, 'configs/cityscapes_teacher.py')
  return recipes.teacher_config('cityscapes', variant)
