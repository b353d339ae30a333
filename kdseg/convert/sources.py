"""The torchvision models kdseg converts, and what each one converts into.

Segmentation models convert into the kdseg model of the same name, the
torchvision mirror, whole: backbone, classifier and, when the state dict has
one, aux_classifier. Classification models (ImageNet weights) convert into the
'backbone' sub-tree that the kdseg models in `initialises` share; their
classifier (`fc`, `classifier`, MobileNetV2's last 1x1 convolution) has no
kdseg counterpart and is dropped. A backbone converts whatever the output
stride: dilation changes no shape.
"""

import dataclasses
from typing import Callable

from kdseg.convert import names
from kdseg.models import mobilenet_v2
from kdseg.models import mobilenet_v3
from kdseg.models import resnet


@dataclasses.dataclass(frozen=True)
class Source:
  """How one torchvision model converts.

  Attributes:
    layers: maps `aux` (the state dict has an aux_classifier) to the model's
      layers in the name table (`kdseg.convert.names`).
    model: the kdseg model whose variables the result is (segmentation) or
      whose 'backbone' sub-tree it is (classification backbones).
    classifiers: kdseg module paths of the layers whose width is the class
      count, re-initialised when the class count changes (segmentation).
    initialises: kdseg models whose backbone the result initialises
      (classification backbones; see `kdseg.convert.init_from`).
    dropped: prefixes of torchvision keys kdseg has no use for.
  """
  layers: Callable[[bool], list[names.Layer]]
  model: str
  classifiers: tuple[str, ...] = ()
  initialises: tuple[str, ...] = ()
  dropped: tuple[str, ...] = ()

  @property
  def is_backbone(self) -> bool:
    return bool(self.initialises)


def _resnet_layers(constructor, tv: str) -> list[names.Layer]:
  trunk = constructor()  # An unbound module: only its attributes are read.
  return names.resnet(trunk.stage_sizes,
                      bottleneck=trunk.block is resnet.Bottleneck, tv=tv)


def _fcn(constructor) -> Callable[[bool], list[names.Layer]]:
  return lambda aux: (
      _resnet_layers(constructor, 'backbone.')
      + names.fcn_head('classifier', 'classifier')
      + (names.fcn_head('aux_classifier', 'aux_classifier') if aux else []))


def _deeplab(backbone: list[names.Layer]) -> Callable[[bool], list]:
  return lambda aux: (
      backbone + names.deeplab_head('classifier', 'classifier')
      + (names.fcn_head('aux_classifier', 'aux_classifier') if aux else []))


def _lraspp(aux: bool) -> list[names.Layer]:
  del aux  # LR-ASPP has no auxiliary head.
  return (names.mobilenet_v3(mobilenet_v3.LARGE, tv='backbone.')
          + names.lraspp_head('classifier', 'classifier'))


def _backbone(layers: list[names.Layer]) -> Callable[[bool], list]:
  return lambda aux: layers


_HEAD = ('classifier/classifier', 'aux_classifier/classifier')

SOURCES: dict[str, Source] = {
    # torchvision.models.segmentation
    'fcn_resnet50': Source(_fcn(resnet.resnet50), 'fcn_resnet50', _HEAD),
    'fcn_resnet101': Source(_fcn(resnet.resnet101), 'fcn_resnet101', _HEAD),
    'deeplabv3_resnet50': Source(
        _deeplab(_resnet_layers(resnet.resnet50, 'backbone.')),
        'deeplabv3_resnet50', _HEAD),
    'deeplabv3_resnet101': Source(
        _deeplab(_resnet_layers(resnet.resnet101, 'backbone.')),
        'deeplabv3_resnet101', _HEAD),
    'deeplabv3_mobilenet_v3_large': Source(
        _deeplab(names.mobilenet_v3(mobilenet_v3.LARGE, tv='backbone.')),
        'deeplabv3_mobilenet_v3_large', _HEAD),
    'lraspp_mobilenet_v3_large': Source(
        _lraspp, 'lraspp_mobilenet_v3_large',
        ('classifier/low_classifier', 'classifier/high_classifier')),
    # torchvision.models (ImageNet classifiers) -> kdseg backbones
    'resnet18': Source(
        _backbone(_resnet_layers(resnet.resnet18, '')), 'deeplabv3_resnet18',
        initialises=('deeplabv3_resnet18',), dropped=('fc.',)),
    'resnet34': Source(
        _backbone(_resnet_layers(resnet.resnet34, '')), 'deeplabv3_resnet34',
        initialises=('deeplabv3_resnet34',), dropped=('fc.',)),
    'resnet50': Source(
        _backbone(_resnet_layers(resnet.resnet50, '')), 'deeplabv3_resnet50',
        initialises=('deeplabv3_resnet50', 'fcn_resnet50',
                     'deeplabv3plus_resnet50'), dropped=('fc.',)),
    'resnet101': Source(
        _backbone(_resnet_layers(resnet.resnet101, '')), 'deeplabv3_resnet101',
        initialises=('deeplabv3_resnet101', 'fcn_resnet101'),
        dropped=('fc.',)),
    'mobilenet_v2': Source(
        _backbone(names.mobilenet_v2(mobilenet_v2.INVERTED_RESIDUAL_SETTING,
                                     tv='features.')),
        'deeplabv3_mobilenet_v2', initialises=('deeplabv3_mobilenet_v2',),
        dropped=('features.18.', 'classifier.')),
    'mobilenet_v3_large': Source(
        _backbone(names.mobilenet_v3(mobilenet_v3.LARGE, tv='features.')),
        'deeplabv3_mobilenet_v3_large',
        initialises=('deeplabv3_mobilenet_v3_large',
                     'lraspp_mobilenet_v3_large'),
        dropped=('classifier.',)),
}


def available() -> list[str]:
  """The torchvision model names `from_torchvision` accepts, sorted."""
  return sorted(SOURCES)


def get(name: str) -> Source:
  if name not in SOURCES:
    raise ValueError(f'Cannot convert {name!r}; convertible torchvision '
                     f'models: {", ".join(available())}.')
  return SOURCES[name]
