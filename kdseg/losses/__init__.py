"""Supervised and distillation losses for dense prediction.

`core` holds cross-entropy, pixel KD, logit MSE and their composition (the
names below keep `from kdseg import losses; losses.pixel_kd(...)` working);
`registry` maps distillation-loss names to functions of one common signature
(defined in `logits`, `feature`, `relational`, `prototypes`, `correlation`).
"""

from kdseg.losses import registry
from kdseg.losses.core import check_temperature
from kdseg.losses.core import cross_entropy
from kdseg.losses.core import cross_entropy_sums
from kdseg.losses.core import distillation_loss
from kdseg.losses.core import distillation_loss_sums
from kdseg.losses.core import label_cross_entropy_sums
from kdseg.losses.core import KD_PIXELS
from kdseg.losses.core import kd_sums
from kdseg.losses.core import KD_TYPES
from kdseg.losses.core import logits_mse
from kdseg.losses.core import logits_mse_sums
from kdseg.losses.core import pixel_kd
from kdseg.losses.core import pixel_kd_sums
from kdseg.losses.core import resize_to
from kdseg.losses.correlation import dist
from kdseg.losses.feature import at
from kdseg.losses.feature import cwd
from kdseg.losses.feature import fitnet
from kdseg.losses.prototypes import ifvd
from kdseg.losses.registry import available
from kdseg.losses.registry import get
from kdseg.losses.registry import spec
from kdseg.losses.registry import Spec
from kdseg.losses.relational import cirkd
from kdseg.losses.relational import pairwise

__all__ = [
    'at', 'available', 'check_temperature', 'cirkd', 'cross_entropy',
    'cross_entropy_sums', 'cwd', 'dist', 'distillation_loss',
    'distillation_loss_sums', 'fitnet', 'get', 'ifvd', 'kd_sums', 'KD_PIXELS',
    'KD_TYPES', 'label_cross_entropy_sums', 'logits_mse', 'logits_mse_sums',
    'pairwise', 'pixel_kd', 'pixel_kd_sums', 'registry', 'resize_to', 'spec',
    'Spec',
]
