"""Named model constructors; `kdseg.models.create` dispatches to these.

Every constructor takes keyword-only arguments: `num_classes` plus the options
it lists (the keyword arguments `create` accepts for that name).

The first six mirror torchvision's segmentation models layer for layer
(`fcn_resnet50`, `fcn_resnet101`, `deeplabv3_resnet50`, `deeplabv3_resnet101`,
`deeplabv3_mobilenet_v3_large`, `lraspp_mobilenet_v3_large`): same layers in
the same order with the same shapes, so their parameter counts equal
torchvision's and a state_dict maps one-to-one. The others are common
distillation students / baselines and tiny models for tests and CPU runs.
"""

import functools
from typing import Optional, Sequence

from jax import numpy as jnp

from kdseg.models import layers
from kdseg.models import mobilenet_v2
from kdseg.models import mobilenet_v3
from kdseg.models import resnet
from kdseg.models import segmenters
from kdseg.models import segnet

Dtype = layers.Dtype

# torchvision uses these rates whatever the output stride.
TORCHVISION_RATES = (12, 24, 36)


def _checked(output_stride: int) -> int:
  # The backbones check too, but only when traced; fail at creation instead.
  if output_stride not in (8, 16, 32):
    raise ValueError(f'output_stride must be 8, 16 or 32; got {output_stride}.')
  return output_stride


def atrous_rates_for(output_stride: int) -> tuple[int, int, int]:
  """The DeepLab papers' ASPP rates: (6, 12, 18) at stride 16, x2 at 8."""
  return {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}[
      _checked(output_stride)]


def _no_aux(name: str, aux: bool) -> None:
  if aux:
    raise ValueError(f'{name} has no auxiliary head; use aux=False.')


def _scaled(widths: Sequence[int], width: float) -> tuple[int, ...]:
  if width <= 0:
    raise ValueError(f'width must be positive, got {width}.')
  return tuple(max(1, int(round(w * width))) for w in widths)


# torchvision mirrors -------------------------------------------------------


def fcn_resnet50(*, num_classes: int, aux: bool = False,
                 output_stride: int = 8, dtype: Dtype = jnp.float32,
                 axis_name: Optional[str] = None) -> segmenters.FCN:
  """Dilated ResNet-50 + FCNHead; aux head on layer3 (1024 ch)."""
  return segmenters.FCN(
      num_classes=num_classes, backbone=resnet.resnet50,
      output_stride=_checked(output_stride), aux=aux, dtype=dtype,
      axis_name=axis_name)


def fcn_resnet101(*, num_classes: int, aux: bool = False,
                  output_stride: int = 8, dtype: Dtype = jnp.float32,
                  axis_name: Optional[str] = None) -> segmenters.FCN:
  """Dilated ResNet-101 + FCNHead; aux head on layer3 (1024 ch)."""
  return segmenters.FCN(
      num_classes=num_classes, backbone=resnet.resnet101,
      output_stride=_checked(output_stride), aux=aux, dtype=dtype,
      axis_name=axis_name)


def deeplabv3_resnet50(*, num_classes: int, aux: bool = False,
                       output_stride: int = 8, dtype: Dtype = jnp.float32,
                       axis_name: Optional[str] = None) -> segmenters.DeepLabV3:
  """Dilated ResNet-50 + DeepLabHead; aux head on layer3 (1024 ch)."""
  return segmenters.DeepLabV3(
      num_classes=num_classes, backbone=resnet.resnet50,
      output_stride=_checked(output_stride), atrous_rates=TORCHVISION_RATES,
      aux=aux, dtype=dtype, axis_name=axis_name)


def deeplabv3_resnet101(*, num_classes: int, aux: bool = False,
                        output_stride: int = 8, dtype: Dtype = jnp.float32,
                        axis_name: Optional[str] = None
                        ) -> segmenters.DeepLabV3:
  """Dilated ResNet-101 + DeepLabHead; aux head on layer3 (1024 ch)."""
  return segmenters.DeepLabV3(
      num_classes=num_classes, backbone=resnet.resnet101,
      output_stride=_checked(output_stride), atrous_rates=TORCHVISION_RATES,
      aux=aux, dtype=dtype, axis_name=axis_name)


def deeplabv3_mobilenet_v3_large(*, num_classes: int, aux: bool = False,
                                 output_stride: int = 16,
                                 dtype: Dtype = jnp.float32,
                                 axis_name: Optional[str] = None
                                 ) -> segmenters.DeepLabV3:
  """ASPP on the 960-channel features; aux head on 'stage3_first' (40 ch)."""
  return segmenters.DeepLabV3(
      num_classes=num_classes, backbone=mobilenet_v3.MobileNetV3,
      output_stride=_checked(output_stride), atrous_rates=TORCHVISION_RATES,
      in_key='stage5', aux=aux, aux_key='stage3_first', dtype=dtype,
      axis_name=axis_name)


def lraspp_mobilenet_v3_large(*, num_classes: int, aux: bool = False,
                              dtype: Dtype = jnp.float32,
                              axis_name: Optional[str] = None
                              ) -> segmenters.LRASPP:
  """Output stride 8. `aux=True` is refused, as in torchvision."""
  _no_aux('lraspp_mobilenet_v3_large', aux)
  return segmenters.LRASPP(
      num_classes=num_classes, backbone=mobilenet_v3.MobileNetV3, dtype=dtype,
      axis_name=axis_name)


# Other full-size models ----------------------------------------------------


def deeplabv3_resnet18(*, num_classes: int, aux: bool = False,
                       output_stride: int = 8, dtype: Dtype = jnp.float32,
                       axis_name: Optional[str] = None) -> segmenters.DeepLabV3:
  """Dilated ResNet-18 (BasicBlocks dilated) + torchvision's DeepLabHead."""
  return segmenters.DeepLabV3(
      num_classes=num_classes, backbone=resnet.resnet18,
      output_stride=output_stride,
      atrous_rates=atrous_rates_for(output_stride), aux=aux, dtype=dtype,
      axis_name=axis_name)


def deeplabv3_resnet34(*, num_classes: int, aux: bool = False,
                       output_stride: int = 8, dtype: Dtype = jnp.float32,
                       axis_name: Optional[str] = None) -> segmenters.DeepLabV3:
  """Dilated ResNet-34 (BasicBlocks dilated) + torchvision's DeepLabHead."""
  return segmenters.DeepLabV3(
      num_classes=num_classes, backbone=resnet.resnet34,
      output_stride=output_stride,
      atrous_rates=atrous_rates_for(output_stride), aux=aux, dtype=dtype,
      axis_name=axis_name)


def deeplabv3_mobilenet_v2(*, num_classes: int, aux: bool = False,
                           output_stride: int = 8, dtype: Dtype = jnp.float32,
                           axis_name: Optional[str] = None
                           ) -> segmenters.DeepLabV3:
  """ASPP on the 320-channel features; aux head on 'stage4' (96 ch)."""
  return segmenters.DeepLabV3(
      num_classes=num_classes, backbone=mobilenet_v2.MobileNetV2,
      output_stride=output_stride,
      atrous_rates=atrous_rates_for(output_stride), in_key='stage5', aux=aux,
      aux_key='stage4', dtype=dtype, axis_name=axis_name)


def deeplabv3plus_resnet50(*, num_classes: int, aux: bool = False,
                           backbone_output_stride: int = 16,
                           dtype: Dtype = jnp.float32,
                           axis_name: Optional[str] = None
                           ) -> segmenters.DeepLabV3Plus:
  """Logits at stride 4 (layer1); ASPP at `backbone_output_stride`."""
  return segmenters.DeepLabV3Plus(
      num_classes=num_classes, backbone=resnet.resnet50,
      backbone_output_stride=backbone_output_stride,
      atrous_rates=atrous_rates_for(backbone_output_stride), aux=aux,
      dtype=dtype, axis_name=axis_name)


def segnet_vgg16(*, num_classes: int, aux: bool = False,
                 dtype: Dtype = jnp.float32,
                 axis_name: Optional[str] = None) -> segnet.SegNet:
  """Output stride 1; inputs divisible by 32. `aux=True` is refused."""
  _no_aux('segnet_vgg16', aux)
  return segnet.SegNet(num_classes=num_classes, dtype=dtype,
                       axis_name=axis_name)


# Tiny models for tests and CPU runs ------------------------------------------


def tiny_deeplabv3(*, num_classes: int, aux: bool = False,
                   output_stride: int = 8, width: float = 1.0,
                   dtype: Dtype = jnp.float32,
                   axis_name: Optional[str] = None) -> segmenters.DeepLabV3:
  """Dilated ResNet of one BasicBlock per stage + DeepLabHead.

  Stage widths 8/16/32/32 and ASPP/head width 32, all times `width`.
  """
  stem, *widths, channels = _scaled((8, 8, 16, 32, 32, 32), width)
  backbone = functools.partial(
      resnet.ResNet, block=resnet.BasicBlock, stage_sizes=(1, 1, 1, 1),
      widths=tuple(widths), stem_width=stem)
  return segmenters.DeepLabV3(
      num_classes=num_classes, backbone=backbone,
      output_stride=output_stride,
      atrous_rates=atrous_rates_for(output_stride), channels=channels,
      aux=aux, dtype=dtype, axis_name=axis_name)


def tiny_fcn(*, num_classes: int, aux: bool = False, output_stride: int = 8,
             width: float = 1.0, dtype: Dtype = jnp.float32,
             axis_name: Optional[str] = None) -> segmenters.FCN:
  """ResNet of one BasicBlock per stage (widths 8/8/16/16 x `width`)."""
  stem, *widths = _scaled((8, 8, 8, 16, 16), width)
  backbone = functools.partial(
      resnet.ResNet, block=resnet.BasicBlock, stage_sizes=(1, 1, 1, 1),
      widths=tuple(widths), stem_width=stem)
  return segmenters.FCN(
      num_classes=num_classes, backbone=backbone,
      output_stride=_checked(output_stride), aux=aux, dtype=dtype,
      axis_name=axis_name)


def tiny_lraspp(*, num_classes: int, aux: bool = False,
                dtype: Dtype = jnp.float32,
                axis_name: Optional[str] = None) -> segmenters.LRASPP:
  """LR-ASPP on a five-block MobileNetV3 (`mobilenet_v3.TINY`); stride 8."""
  _no_aux('tiny_lraspp', aux)
  backbone = functools.partial(mobilenet_v3.MobileNetV3,
                               config=mobilenet_v3.TINY)
  return segmenters.LRASPP(
      num_classes=num_classes, backbone=backbone, inter_channels=16,
      dtype=dtype, axis_name=axis_name)
