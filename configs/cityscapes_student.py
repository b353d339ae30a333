"""Cityscapes (19 training classes) baseline student: trained on the labels alone.

The reference its distilled twin (configs/cityscapes_distill.py) is measured
against: same data, schedule and model, no teacher.

  # Published-style recipe (an accelerator): DeepLabV3-ResNet-18, as CIRKD.
  python -m kdseg.main --config configs/cityscapes_student.py \
      --config.data.kwargs.manual_dir=DIR \
      --workdir /tmp/cityscapes_student

  # A 2-core CPU: a small LR-ASPP at 1/8 resolution (128x256 frames, 128x128 crops), 1500 steps of 8 images
  # (tens of minutes).
  python -m kdseg.main --config configs/cityscapes_student.py:cpu \
      --config.data.kwargs.manual_dir=DIR \
      --workdir /tmp/cityscapes_student_cpu

Other students: e.g. `--config.model.name=deeplabv3_mobilenet_v2` or
`lraspp_mobilenet_v3_large` (`kdseg.models.available()` lists them all).
Cityscapes needs a manual download: DIR holds `leftImg8bit_trainvaltest.zip`
and `gtFine_trainvaltest.zip` from cityscapes-dataset.com; TFDS prepares them
once.
"""

from configs import recipes


def get_config(variant: str = ''):
  variant = recipes.check_variant(variant, 'configs/cityscapes_student.py')
  return recipes.student_config('cityscapes', variant)
