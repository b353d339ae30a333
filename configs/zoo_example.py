"""Distillation terms, a stage switch and a connector, on synthetic scenes.

Trains a teacher and a baseline student, then distills the student in two
stages:

1. steps 0-100: a FitNets hint on `layer3` (student 32 channels, teacher 48:
   a trainable 1x1 conv + batch-norm connector maps one to the other) with
   the cross-entropy;
2. steps 100-400: pixel KD from the teacher's logits, its temperature falling
   from 2 to 1 over the stage, plus attention transfer on `layer4`.

Every term's value, weight and temperature is logged under its label
(`hint`, `soft`, `attention`). The connector trains with the student but is
not part of its checkpointed model.

  python -m kdseg.main --config configs/zoo_example.py --workdir /tmp/kdseg_zoo

Expected runtime: about 2 minutes on an idle 2-core CPU (3 CPU-minutes:
teacher 45.6%, baseline student 40.4%, distilled student 41.2% validation
mIoU). The summary table is printed and written to `WORKDIR/summary.json`.
"""

from kdseg import config as config_lib


def get_config():
  config = config_lib.defaults()
  config.mode = 'compare'

  config.data.kwargs = {'height': 64, 'width': 64, 'num_classes': 5,
                        'num_train_examples': 256, 'num_val_examples': 64}
  config.data.crop_size = (64, 64)
  config.data.scale_range = (0.75, 1.5)

  config.teacher.name = 'tiny_deeplabv3'
  config.teacher.options = {'width': 1.5}
  config.model.name = 'tiny_fcn'
  config.model.options = {'width': 2.0}

  # The terms below replace the classic pixel KD term.
  config.loss.kd_weight = 0.0
  config.stages = (
      {'steps': 100, 'loss': {'terms': {
          'hint': {'loss': 'fitnet', 'student': 'layer3',
                   'teacher': 'layer3'},
      }}},
      {'loss': {'terms': {
          'soft': {'loss': 'pixel_kd',
                   'temperature': {'name': 'linear', 'init_value': 2.0,
                                   'end_value': 1.0}},
          # The paper's beta / 2 on the mean squared attention difference.
          'attention': {'loss': 'at', 'student': 'layer4',
                        'teacher': 'layer4', 'weight': 500.0},
      }}},
  )

  config.train.steps = 400
  config.train.batch_size = 16
  config.train.learning_rate = {'name': 'poly', 'init_value': 0.05,
                                'power': 0.9, 'warmup_steps': 20}
  config.train.log_every = 50
  config.train.eval_every = 200
  config.eval.batch_size = 32
  return config
