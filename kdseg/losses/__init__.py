"""Supervised and distillation losses for dense prediction.

`core` holds cross-entropy, pixel KD, logit MSE and their composition (the
names below keep `from kdseg import losses; losses.pixel_kd(...)` working);
`registry` maps distillation-loss names to functions of one common signature.
"""

from kdseg.losses import registry
from kdseg.losses.core import check_temperature
from kdseg.losses.core import cross_entropy
from kdseg.losses.core import cross_entropy_sums
from kdseg.losses.core import distillation_loss
from kdseg.losses.core import distillation_loss_sums
from kdseg.losses.core import KD_TYPES
from kdseg.losses.core import logits_mse
from kdseg.losses.core import logits_mse_sums
from kdseg.losses.core import pixel_kd
from kdseg.losses.core import pixel_kd_sums
from kdseg.losses.core import resize_to
from kdseg.losses.registry import available
from kdseg.losses.registry import get
from kdseg.losses.registry import spec
from kdseg.losses.registry import Spec

__all__ = [
    'available', 'check_temperature', 'cross_entropy', 'cross_entropy_sums',
    'distillation_loss', 'distillation_loss_sums', 'get', 'KD_TYPES',
    'logits_mse', 'logits_mse_sums', 'pixel_kd', 'pixel_kd_sums', 'registry',
    'resize_to', 'spec', 'Spec',
]
