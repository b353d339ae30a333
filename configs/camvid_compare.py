"""CamVid: does distillation help? Teacher, baselines and distilled students
over seeds, with the paired gain (mode 'compare', kdseg.compare).

Variants (the config path's suffix):
  cpu            the CPU recipe: teacher (width 4, 8000 steps), then
                 baseline and distilled student (DIST, the teacher run on
                 every crop) for 3 seeds; prints mean +- std and the paired
                 gain with its 95% t-interval.
  cpu,screen     the first screen: 1500 steps, a width-2 teacher given as
                 compare.teacher_workdir, CIRKD's KD, CWD and the recipe's
                 loss balance (RESULTS.md).
  The studies cpu,ablation ... cpu,dist and cpu,qat keep the teacher they
  were measured with: width 3, 6000 steps, its logits cached.
  cpu,ablation   the recipe's loss balance against CIRKD's.
  cpu,balance    how much distillation, and when: a light KD weight (0.25)
                 and KD for the first half of the steps only (then
                 cross-entropy alone), against the full-CE baseline.
  cpu,capacity   the recipe with a larger student (tiny_deeplabv3 width 1,
                 the teacher's family): does a student with more room take
                 more from the teacher?
  cpu,focus      what the student is taught, for the capacity gap: KD only
                 where the teacher is right (kd_pixels='teacher_correct'),
                 CWD (every class channel counts alike) and DIST
                 (correlation, not exact match: made for large gaps).
  cpu,dist       the focus study's DIST alone, over 3 seeds (its runs are
                 those of cpu,focus in the same workdir).
  cpu,self       self-distillation: the teacher is the student's own
                 architecture, trained like a baseline (4500 steps), and the
                 variant is pixel KD (CE 0.5 + KD 0.5): does pixel KD hurt
                 without a size gap? (`compare.teacher_workdir` may give a
                 trained baseline student as the teacher.)
  cpu,online     the recipe's teacher (width 4, 8000 steps), DIST from
                 its cached logits, and an online twin of each distilled
                 student (the teacher run on every batch instead of its
                 cached logits): is the warped whole-image teacher as good
                 a target as the teacher on the crop?
  cpu,strong     the recipe as checked on seeds fixed in advance (cpu
                 with its variant labelled distill_online).
  cpu,qat        the recipe's DIST student, and its twin whose last 1000
                 steps train with fake int8 quantization (model.quantize
                 per stage): does the int8 LiteRT export keep more of the
                 distilled accuracy? (`--config.mode=export` on each
                 seed's workdir converts and scores both.)
  cpu,zoo        the method zoo (configs/camvid_zoo.py's methods) on the
                 recipe, each against the same baselines.
  ''             the published-style recipe (an accelerator).

  python -m kdseg.main --config configs/camvid_compare.py:cpu \\
      --config.data.kwargs.manual_dir=../shared/camvid --workdir /tmp/camvid_compare

`--config.compare.teacher_workdir=DIR` distils from a teacher trained before
(for instance by an earlier compare) instead of training one;
`--config.compare.seeds=N` sets the number of seeds. Results: RESULTS.md.
"""

from configs import camvid_zoo
from configs import recipes

_CONSTANT_T1 = {'name': 'constant', 'value': 1.0}
_SCREEN = {
    'kd_t1': {'loss': {'ce_weight': 1.0, 'kd_weight': 1.0,
                       'temperature': _CONSTANT_T1}},
    'cwd': {'loss': {'ce_weight': 1.0, 'kd_weight': 0.0, 'terms': {
        'cwd': {'loss': 'cwd', 'weight': 3.0, 'temperature': 4.0}}}},
    'kd_half': {'loss': {'ce_weight': 0.5, 'kd_weight': 0.5,
                         'temperature': _CONSTANT_T1}},
}
# CIRKD's KD (cross-entropy + KL at T=1, both weight 1) against the recipe's
# (both weight 0.5: cross-entropy against the average of label and teacher).
_ABLATION = {
    'kd_t1': {'loss': {'ce_weight': 1.0, 'kd_weight': 1.0,
                       'temperature': _CONSTANT_T1}},
    'kd_half': {'loss': {'ce_weight': 0.5, 'kd_weight': 0.5,
                         'temperature': _CONSTANT_T1}},
}


# Light or early distillation: whether the student needs less of the teacher.
_BALANCE = {
    'kd_quarter': {'loss': {'ce_weight': 1.0, 'kd_weight': 0.25,
                            'temperature': _CONSTANT_T1}},
    'kd_early': {'stages': (
        {'steps': 2250, 'loss': {'ce_weight': 1.0, 'kd_weight': 0.5,
                                 'temperature': _CONSTANT_T1}},
        {'loss': {'ce_weight': 1.0, 'kd_weight': 0.0}})},
}


# The teacher's mistakes left out, or its distribution matched loosely.
_FOCUS = {
    'kd_correct': {'loss': {'ce_weight': 1.0, 'kd_weight': 0.5,
                            'kd_pixels': 'teacher_correct',
                            'temperature': _CONSTANT_T1}},
    'cwd': {'loss': {'ce_weight': 1.0, 'kd_weight': 0.0, 'terms': {
        'cwd': {'loss': 'cwd', 'weight': 3.0, 'temperature': 4.0}}}},
    'dist': {'loss': {'ce_weight': 1.0, 'kd_weight': 0.0, 'terms': {
        'dist': {'loss': 'dist', 'weight': 1.0}}}},
}


def _loss_fields(loss: dict) -> dict:
  return {k: dict(v) if isinstance(v, dict) else v for k, v in loss.items()}


def _zoo() -> dict:
  out = {}
  for method in camvid_zoo.METHODS:
    method_config = camvid_zoo.get_config(f'cpu,{method}')
    out[method] = {'loss': {
        'ce_weight': method_config.loss.ce_weight,
        'kd_weight': method_config.loss.kd_weight,
        'temperature': method_config.loss.temperature.to_dict(),
        'terms': method_config.loss.terms.to_dict()}}
  return out


def _pin_width3_teacher(config) -> None:
  """The teacher these studies were measured with (recipes.WIDTH3_TEACHER),
  so that their commands in RESULTS.md still hold."""
  config.teacher.options = {'width': recipes.WIDTH3_TEACHER['width']}
  config.compare.teacher_steps = recipes.WIDTH3_TEACHER['steps']
  config.teacher.cache = recipes.WIDTH3_TEACHER['cache']


def get_config(variant: str = 'cpu'):
  parts = (variant or '').split(',')
  base = recipes.check_variant(parts[0], 'configs/camvid_compare.py')
  study = parts[1] if len(parts) > 1 else ''
  studies = ('', 'screen', 'ablation', 'balance', 'capacity', 'focus',
             'dist', 'self', 'online', 'strong', 'qat', 'zoo')
  if len(parts) > 2 or study not in studies or (
      study and base != 'cpu'):
    raise ValueError(
        f'configs/camvid_compare.py: unknown variant {variant!r}; use cpu, '
        'cpu,screen, cpu,ablation, cpu,balance, cpu,capacity, cpu,focus, '
        'cpu,dist, cpu,self, cpu,online, cpu,strong, cpu,qat, cpu,zoo or '
        'nothing (the published-style recipe).')
  config = recipes.distill_config('camvid', base)
  config.mode = 'compare'
  config.compare.seeds = 3 if base == 'cpu' else 1
  config.compare.teacher_steps = recipes.teacher_config(
      'camvid', base).train.steps
  if base == 'cpu':
    # The baseline is the supervised student (camvid_student.py:cpu, plain
    # cross-entropy); the recipe's distillation (camvid_distill.py:cpu) is a
    # variant, so that the baseline inherits none of it.
    config.loss.ce_weight = 1.0
    config.loss.kd_weight = 0.0
    config.loss.terms = {}
    config.compare.variants = {'distill': {'loss': _loss_fields(
        recipes.cpu_distillation('camvid'))}}
  if study in ('ablation', 'balance', 'capacity', 'focus', 'dist', 'qat'):
    _pin_width3_teacher(config)
  if study == 'screen':
    # The first screen (RESULTS.md): the old 1500-step schedule, distilled
    # from a width-2 teacher given as compare.teacher_workdir.
    config.train.steps = 1500
    config.train.eval_every = 750
    config.teacher.options = {'width': 2.0}
    config.teacher.cache = False
    config.compare.variants = _SCREEN
  elif study == 'ablation':
    config.compare.variants = _ABLATION
  elif study == 'balance':
    config.compare.variants = _BALANCE
  elif study == 'capacity':
    # Measured with pixel KD (CE 0.5 + KD 0.5), before the recipe's DIST.
    config.model.name = 'tiny_deeplabv3'
    config.model.options = {'width': 1.0}
    config.compare.variants = {'distill': {'loss': _loss_fields(
        recipes.CPU_KD)}}
  elif study == 'focus':
    config.compare.variants = _FOCUS
  elif study == 'dist':
    config.compare.variants = {'dist': _FOCUS['dist']}
  elif study == 'self':
    config.teacher.name = config.model.name
    config.teacher.options = dict(config.model.options)
    config.compare.teacher_steps = config.train.steps
    config.teacher.cache = True  # As measured (RESULTS.md).
    config.compare.variants = {'kd': {'loss': _loss_fields(recipes.CPU_KD)}}
  elif study in ('online', 'strong'):
    config.teacher.options = {'width': 4.0}
    config.compare.teacher_steps = 8000
    distill = config.compare.variants['distill']
    online = {'distill_online': {**distill, 'teacher': {'cache': False}}}
    cached = {'distill': {**distill, 'teacher': {'cache': True}}}
    config.compare.variants = (
        {**cached, **online} if study == 'online' else online)
  elif study == 'qat':
    distill = config.compare.variants['distill']
    config.compare.variants = {
        'distill': distill,
        'distill_qat': {**distill, 'stages': (
            {'steps': config.train.steps - 1000}, {'quantize': 'int8'})}}
  elif study == 'zoo':
    config.compare.variants = _zoo()
    # Feature terms need the teacher's features: no cache.
    config.teacher.cache = False
  return config
