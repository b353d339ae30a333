"""MobileNetV2 backbone (torchvision layout), optionally dilated.

Children are named after torchvision's `features` indices: `features_0` is the
stem, `features_1` .. `features_17` the inverted residual blocks. The final
1x1 convolution to 1280 channels (`features.18`) and the classifier are left
out: like the common DeepLabV3-MobileNetV2 ports, segmentation heads read the
320-channel output of the last block.

torchvision's MobileNetV2 has no dilation. For output strides 8 and 16 the
strided blocks beyond the target stride use stride 1 and dilate their
depthwise convolutions instead, with the ResNet convention: the block that
gives up its stride keeps the previous dilation, the following blocks use the
new one.

Feature maps returned (strides for output_stride=8/16/32; channels at
width_mult=1):

  'stem'    features_0, stride 2, 32 channels.
  'stage1'  features_1, stride 2, 16 channels.
  'stage2'  features_3, stride 4, 24 channels.
  'stage3'  features_6, stride 8, 32 channels.
  'stage4'  features_13, stride 8 / 16 / 16, 96 channels.
  'stage5'  features_17, stride 8 / 16 / 32, 320 channels.
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdseg.models import layers
from kdseg.models import mobilenet_utils

Array = jax.Array

# (expand ratio t, output channels c, repeats n, first stride s), torchvision.
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
  """Expand (1x1) -> depthwise 3x3 -> linear projection (1x1), ReLU6."""
  out_channels: int
  expand_ratio: int
  strides: int = 1
  dilation: int = 1
  residual: bool = False
  dtype: layers.Dtype = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    """[B, H, W, Cin] -> [B, H/strides, W/strides, out_channels]."""
    cna = lambda *a, **k: layers.ConvNormAct(
        *a, dtype=self.dtype, axis_name=self.axis_name, **k)
    hidden = int(round(x.shape[-1] * self.expand_ratio))
    y = x
    if self.expand_ratio != 1:
      y = cna(hidden, 1, activation=nn.relu6, name='expand')(y, train=train)
    y = cna(hidden, 3, strides=self.strides, dilation=self.dilation,
            groups=hidden, activation=nn.relu6, name='depthwise')(y,
                                                                  train=train)
    y = cna(self.out_channels, 1, activation=None, name='project')(y,
                                                                  train=train)
    return x + y if self.residual else y


class MobileNetV2(nn.Module):
  """MobileNetV2 feature extractor; see the module docstring for outputs."""
  width_mult: float = 1.0
  output_stride: int = 8
  dtype: layers.Dtype = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, images: Array, *, train: bool) -> dict[str, Array]:
    """Maps images [B, H, W, 3] to the dict of stage outputs [B, h, w, C]."""
    blocks = []  # (expand ratio, output channels, nominal stride)
    for t, c, n, s in INVERTED_RESIDUAL_SETTING:
      c = mobilenet_utils.make_divisible(c * self.width_mult)
      blocks += [(t, c, s if i == 0 else 1) for i in range(n)]
    plan = mobilenet_utils.plan_blocks(
        [s for _, _, s in blocks], self.output_stride,
        first_keeps_dilation=True)

    x = layers.ConvNormAct(
        mobilenet_utils.make_divisible(32 * self.width_mult), 3, strides=2,
        activation=nn.relu6, dtype=self.dtype, axis_name=self.axis_name,
        name='features_0')(images, train=train)
    features = {'stem': x}
    for i, ((t, c, s), p) in enumerate(zip(blocks, plan)):
      x = InvertedResidual(
          c, t, strides=p.strides, dilation=p.dilation,
          residual=s == 1 and x.shape[-1] == c, dtype=self.dtype,
          axis_name=self.axis_name, name=f'features_{i + 1}')(x, train=train)
      # The last block of each nominal stride ends a stage.
      features[f'stage{p.stage}'] = x
    return features
