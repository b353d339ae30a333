"""CamVid: one student distilled with each method of the zoo, for comparison.

The baseline student and the pixel-KD student are configs/camvid_student.py
and configs/camvid_distill.py; this file adds the other methods on top of
the same cross-entropy, data, schedule, student and teacher. The variant is
`METHOD` (published-style recipe) or `cpu,METHOD` (the 2-core CPU recipe):

  python -m kdseg.main --config configs/camvid_zoo.py:cpu,cwd \
      --config.data.kwargs.manual_dir=../shared/camvid \
      --config.teacher.checkpoint=/tmp/camvid_teacher_cpu --workdir /tmp/camvid_cwd_cpu

Methods (weights and temperatures from the papers, as CIRKD uses them):
  kd        pixel KD on the logits (same as configs/camvid_distill.py);
  cwd       channel-wise distillation of the logits, T=4, weight 3;
  pairwise  SKD pair-wise similarity of the head features (pooled to 1/2),
            weight 10;
  dist      DIST's inter- and intra-class correlation terms, weight 1;
  skd       pixel KD + pair-wise (SKD without its adversarial term).

Each CPU run takes about as long as configs/camvid_distill.py:cpu.
"""

from configs import recipes

METHODS = ('kd', 'cwd', 'pairwise', 'dist', 'skd')

_PAIRWISE = {'loss': 'pairwise', 'student': 'head', 'teacher': 'head',
             'weight': 10.0}
_TERMS = {
    'kd': {},
    'cwd': {'cwd': {'loss': 'cwd', 'weight': 3.0, 'temperature': 4.0}},
    'pairwise': {'pairwise': _PAIRWISE},
    'dist': {'dist': {'loss': 'dist', 'weight': 1.0}},
    'skd': {'pairwise': _PAIRWISE},
}


def get_config(variant: str = 'kd'):
  parts = (variant or 'kd').split(',')
  cpu = parts[0] == 'cpu'
  method = parts[1] if cpu and len(parts) == 2 else parts[0]
  if len(parts) > 2 or method not in METHODS or (not cpu and len(parts) > 1):
    raise ValueError(
        f'configs/camvid_zoo.py: unknown variant {variant!r}; use METHOD or '
        f'cpu,METHOD with METHOD one of {list(METHODS)}.')
  config = recipes.distill_config('camvid', 'cpu' if cpu else '')
  # Only kd and skd keep the classic pixel-KD term (on a CPU with
  # `recipes.CPU_KD`'s weights); the others add their term to the full
  # cross-entropy.
  if method in ('kd', 'skd') and cpu:
    config.loss.ce_weight = recipes.CPU_KD['ce_weight']
    config.loss.kd_weight = recipes.CPU_KD['kd_weight']
    config.loss.temperature = dict(recipes.CPU_KD['temperature'])
  if method not in ('kd', 'skd'):
    config.loss.kd_weight = 0.0
    config.loss.ce_weight = 1.0
  config.loss.terms = _TERMS[method]
  if method in ('pairwise', 'skd'):
    config.teacher.cache = False  # Feature terms need the teacher online.
  return config
