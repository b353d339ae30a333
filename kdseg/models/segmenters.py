"""Segmentation models: a backbone, a head and an optional auxiliary head.

Every model maps images [B, H, W, 3] to `(logits, features)`:

* logits: float32 [B, H/os, W/os, num_classes] at the model's own
  `output_stride` (os); they are not up-sampled to the input size, which is
  left to the loss / evaluation code (`kdseg.models.layers.resize_bilinear`).
* features: dict of the backbone's named maps (see the backbone modules),
  plus 'head' (the features the classifier convolution reads) and, when the
  auxiliary head is enabled, 'aux_logits' (float32, at the stride of the
  map it reads). Feature maps stay in the computation `dtype`.

Children are named as in torchvision: `backbone`, `classifier`,
`aux_classifier`. Dropout layers need a 'dropout' rng when `train=True`.

The backbone is given as a factory called with `output_stride=`, `dtype=`,
`axis_name=` and `name=` that returns a module mapping images to a dict of
feature maps (e.g. `functools.partial(resnet.ResNet, ...)`).
"""

from typing import Callable, ClassVar, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdseg.models import heads
from kdseg.models import layers

Array = jax.Array
BackboneFactory = Callable[..., nn.Module]
Outputs = tuple[Array, dict[str, Array]]


def _run_backbone(module: nn.Module, images: Array, output_stride: int, *,
                  train: bool) -> dict[str, Array]:
  """Validates `images` and runs `module.backbone`; call from compact code."""
  layers.check_images(images)
  backbone = module.backbone(output_stride=output_stride, dtype=module.dtype,
                             axis_name=module.axis_name, name='backbone')
  return backbone(images, train=train)


def _assemble(module: nn.Module, logits: Array, head_features: Array,
              features: dict[str, Array], *, train: bool,
              aux_key: Optional[str] = None) -> Outputs:
  """Returns the model outputs `(logits, features)`.

  Adds 'head' to the backbone features and, unless `aux_key` is None, the
  logits of an auxiliary FCN head on `features[aux_key]` as 'aux_logits'.
  """
  outputs = dict(features)
  outputs['head'] = head_features
  if aux_key is not None:
    aux_logits, _ = heads.FCNHead(
        module.num_classes, dtype=module.dtype, axis_name=module.axis_name,
        name='aux_classifier')(features[aux_key], train=train)
    # Cast to float32 so that losses see full-precision logits under bf16.
    outputs['aux_logits'] = aux_logits.astype(jnp.float32)
  return logits.astype(jnp.float32), outputs


class FCN(nn.Module):
  """Fully convolutional network: backbone -> FCNHead (torchvision `FCN`).

  Attributes:
    num_classes: number of output classes.
    backbone: backbone factory (see the module docstring).
    output_stride: stride of the backbone output, hence of the logits.
    in_key: backbone feature read by the head.
    aux: whether to add the auxiliary FCN head on `aux_key`.
    aux_key: backbone feature read by the auxiliary head.
    dtype: computation dtype; parameters stay float32.
    axis_name: batch-norm synchronisation axis, e.g. 'data', or None.
  """
  num_classes: int
  backbone: BackboneFactory
  output_stride: int = 8
  in_key: str = 'layer4'
  aux: bool = False
  aux_key: str = 'layer3'
  dtype: layers.Dtype = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, images: Array, *, train: bool) -> Outputs:
    """[B, H, W, 3] -> logits [B, H/os, W/os, classes], features."""
    features = _run_backbone(self, images, self.output_stride, train=train)
    logits, head_features = heads.FCNHead(
        self.num_classes, dtype=self.dtype, axis_name=self.axis_name,
        name='classifier')(features[self.in_key], train=train)
    return _assemble(self, logits, head_features, features, train=train,
                     aux_key=self.aux_key if self.aux else None)


class DeepLabV3(nn.Module):
  """DeepLabV3: backbone -> DeepLabHead (ASPP) (torchvision `DeepLabV3`).

  Attributes:
    num_classes: number of output classes.
    backbone: backbone factory (see the module docstring).
    output_stride: stride of the backbone output, hence of the logits.
    atrous_rates: dilation rates of the three 3x3 ASPP branches.
    channels: width of ASPP and of the head.
    in_key: backbone feature read by the head.
    aux: whether to add the auxiliary FCN head on `aux_key`.
    aux_key: backbone feature read by the auxiliary head.
    dtype: computation dtype; parameters stay float32.
    axis_name: batch-norm synchronisation axis, e.g. 'data', or None.
  """
  num_classes: int
  backbone: BackboneFactory
  output_stride: int = 8
  atrous_rates: Sequence[int] = (12, 24, 36)
  channels: int = 256
  in_key: str = 'layer4'
  aux: bool = False
  aux_key: str = 'layer3'
  dtype: layers.Dtype = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, images: Array, *, train: bool) -> Outputs:
    """[B, H, W, 3] -> logits [B, H/os, W/os, classes], features."""
    features = _run_backbone(self, images, self.output_stride, train=train)
    logits, head_features = heads.DeepLabHead(
        self.num_classes, self.atrous_rates, self.channels, dtype=self.dtype,
        axis_name=self.axis_name, name='classifier')(
            features[self.in_key], train=train)
    return _assemble(self, logits, head_features, features, train=train,
                     aux_key=self.aux_key if self.aux else None)


class DeepLabV3Plus(nn.Module):
  """DeepLabV3+: ASPP on the deep features, decoder with low-level features.

  The logits come out at the stride of `low_key` (layer1 of a ResNet: 4),
  whatever the backbone's output stride (16 by default, as in the paper).

  Attributes:
    num_classes: number of output classes.
    backbone: backbone factory (see the module docstring).
    backbone_output_stride: stride of the backbone's deepest features.
    atrous_rates: dilation rates of the three 3x3 ASPP branches.
    channels: width of ASPP and of the decoder.
    low_key: backbone feature the decoder fuses (stride `output_stride`).
    in_key: backbone feature read by ASPP.
    aux: whether to add the auxiliary FCN head on `aux_key`.
    aux_key: backbone feature read by the auxiliary head.
    dtype: computation dtype; parameters stay float32.
    axis_name: batch-norm synchronisation axis, e.g. 'data', or None.
  """
  output_stride: ClassVar[int] = 4

  num_classes: int
  backbone: BackboneFactory
  backbone_output_stride: int = 16
  atrous_rates: Sequence[int] = (6, 12, 18)
  channels: int = 256
  low_key: str = 'layer1'
  in_key: str = 'layer4'
  aux: bool = False
  aux_key: str = 'layer3'
  dtype: layers.Dtype = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, images: Array, *, train: bool) -> Outputs:
    """[B, H, W, 3] -> logits [B, H/4, W/4, classes], features."""
    features = _run_backbone(self, images, self.backbone_output_stride,
                             train=train)
    logits, head_features = heads.DeepLabV3PlusHead(
        self.num_classes, self.atrous_rates, self.channels, dtype=self.dtype,
        axis_name=self.axis_name, name='classifier')(
            features[self.low_key], features[self.in_key], train=train)
    return _assemble(self, logits, head_features, features, train=train,
                     aux_key=self.aux_key if self.aux else None)


class LRASPP(nn.Module):
  """Lite R-ASPP (torchvision `LRASPP`); no auxiliary head.

  The logits come out at the stride of `low_key` (8 for MobileNetV3).

  Attributes:
    num_classes: number of output classes.
    backbone: backbone factory (see the module docstring).
    backbone_output_stride: stride of the `high_key` features (torchvision:
      16, the dilated MobileNetV3).
    inter_channels: width of the high-level branch.
    low_key: backbone feature of the low-level classifier.
    high_key: backbone feature of the high-level branch.
    dtype: computation dtype; parameters stay float32.
    axis_name: batch-norm synchronisation axis, e.g. 'data', or None.
  """
  output_stride: ClassVar[int] = 8

  num_classes: int
  backbone: BackboneFactory
  backbone_output_stride: int = 16
  inter_channels: int = 128
  low_key: str = 'stage3_first'
  high_key: str = 'stage5'
  dtype: layers.Dtype = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, images: Array, *, train: bool) -> Outputs:
    """[B, H, W, 3] -> logits [B, H/8, W/8, classes], features."""
    features = _run_backbone(self, images, self.backbone_output_stride,
                             train=train)
    logits, head_features = heads.LRASPPHead(
        self.num_classes, self.inter_channels, dtype=self.dtype,
        axis_name=self.axis_name, name='classifier')(
            features[self.low_key], features[self.high_key], train=train)
    return _assemble(self, logits, head_features, features, train=train)
