"""Registry of distillation losses: name -> function and metadata.

Every registered loss is called as

  fn(student, teacher, *, mask=None, **hyperparameters) -> float32 scalar

on `[B, H, W, C]` student and teacher maps of the same spatial size (resize
first with `kdseg.losses.resize_to`), with `mask` an optional `[B, H, W]`
pixel weight (1 counts, 0 ignores). Losses with `spec(name).needs_labels`
also take `labels=` (int `[B, H', W']`) and `ignore_index=`. Hyperparameters
default to the values of the loss's paper; `spec(name).defaults` lists them.
The teacher is a constant target: no gradient flows into it.
"""

import dataclasses
import inspect
from typing import Any, Callable, Mapping

from kdseg.losses import correlation
from kdseg.losses import feature
from kdseg.losses import logits
from kdseg.losses import prototypes
from kdseg.losses import relational

LossFn = Callable[..., Any]

# Keyword arguments that are data, not hyperparameters.
_DATA_KWARGS = ('mask', 'labels', 'ignore_index')


@dataclasses.dataclass(frozen=True)
class Spec:
  """What a registered loss compares and which arguments it takes.

  Attributes:
    name: registry name.
    fn: the loss function.
    compares: 'logits' or 'features'.
    default_key: which model output to compare by default: 'logits', or the
      name of a feature map (a key of the model's feature dict, e.g. 'head').
    takes_temperature: whether `fn` accepts `temperature=`.
    needs_labels: whether `fn` requires `labels=` (and accepts
      `ignore_index=`).
    same_channels: whether student and teacher must have the same channel
      count (otherwise, e.g. for similarity-matrix losses, they may differ).
    defaults: keyword hyperparameter -> default (the paper's value; memory
      knobs such as `chunk_size` default to None), read from `fn`'s
      signature.
    reference: the paper the definition and defaults follow.
  """
  name: str
  fn: LossFn
  compares: str
  default_key: str
  needs_labels: bool
  same_channels: bool
  reference: str

  @property
  def defaults(self) -> Mapping[str, Any]:
    params = inspect.signature(self.fn).parameters.values()
    return {p.name: p.default for p in params
            if p.kind is inspect.Parameter.KEYWORD_ONLY
            and p.name not in _DATA_KWARGS}

  @property
  def takes_temperature(self) -> bool:
    return 'temperature' in self.defaults


_SPECS: dict[str, Spec] = {}


def _register(name: str, fn: LossFn, *, compares: str, default_key: str,
              needs_labels: bool = False, same_channels: bool = True,
              reference: str) -> None:
  _SPECS[name] = Spec(name=name, fn=fn, compares=compares,
                      default_key=default_key, needs_labels=needs_labels,
                      same_channels=same_channels, reference=reference)


_register('pixel_kd', logits.pixel_kd, compares='logits', default_key='logits',
          reference='Hinton et al. 2015; Liu et al., SKD, CVPR 2019')
_register('logits_mse', logits.logits_mse, compares='logits',
          default_key='logits', reference='Ba & Caruana, NeurIPS 2014')
_register('cwd', feature.cwd, compares='logits', default_key='logits',
          reference='Shu et al., Channel-wise KD, ICCV 2021')
_register('dist', correlation.dist, compares='logits', default_key='logits',
          reference='Huang et al., DIST, NeurIPS 2022')
_register('at', feature.at, compares='features', default_key='head',
          same_channels=False,
          reference='Zagoruyko & Komodakis, Attention Transfer, ICLR 2017')
_register('fitnet', feature.fitnet, compares='features', default_key='head',
          reference='Romero et al., FitNets, ICLR 2015')
_register('pairwise', relational.pairwise, compares='features',
          default_key='head', same_channels=False,
          reference='Liu et al., SKD pair-wise, CVPR 2019')
_register('cirkd', relational.cirkd, compares='features', default_key='head',
          same_channels=False,
          reference='Yang et al., CIRKD mini-batch, CVPR 2022')
_register('ifvd', prototypes.ifvd, compares='features', default_key='head',
          needs_labels=True, same_channels=False,
          reference='Wang et al., IFVD, ECCV 2020')
# Not registered: SKD's holistic (adversarial) term, which needs a trained
# discriminator and so is not a pure function of the two maps.

def available() -> list[str]:
  """Returns the registered loss names, sorted."""
  return sorted(_SPECS)


def spec(name: str) -> Spec:
  """Returns the `Spec` of loss `name`; ValueError listing valid names."""
  try:
    return _SPECS[name]
  except KeyError:
    raise ValueError(f'Unknown distillation loss {name!r}; valid: '
                     f'{available()}.') from None


def get(name: str) -> LossFn:
  """Returns the loss function registered as `name` (see module docstring)."""
  return spec(name).fn
