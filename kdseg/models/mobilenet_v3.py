"""MobileNetV3 backbones (torchvision layout), optionally dilated.

Children are named after torchvision's `features` indices: `features_0` is the
stem, `features_1` .. `features_15` the inverted residual blocks and
`features_16` the final 1x1 convolution (to 960 channels for the large
model), which belongs to the backbone as in torchvision's segmentation models.
The classifier is left out.

Batch norm uses torchvision's MobileNetV3 settings, eps=1e-3 and PyTorch
momentum 0.01 (flax momentum 0.99), not the 1e-5 / 0.1 used elsewhere: the
converted running statistics are only valid with the same epsilon.

`output_stride=16` reproduces `mobilenet_v3_large(dilated=True)`: the last
stage keeps stride 1 and every one of its blocks, including the first,
dilates its depthwise convolution by 2. Output stride 8 applies the same rule
one stage earlier (dilation 2 then 4).

Feature maps returned for `LARGE` (strides for output_stride=8/16/32):

  'stem'          features_0, stride 2, 16 channels.
  'stage1'        features_1, stride 2, 16 channels.
  'stage2'        features_3, stride 4, 24 channels.
  'stage3_first'  features_4, stride 8, 40 channels: the first block at
                  stride 8, the tap ("C2") that torchvision's auxiliary head
                  and LR-ASPP low-level branch read.
  'stage3'        features_6, stride 8, 40 channels.
  'stage4'        features_12, stride 8 / 16 / 16, 112 channels.
  'stage5'        features_16, stride 8 / 16 / 32, 960 channels.
"""

from typing import NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdseg.models import layers
from kdseg.models import mobilenet_utils

Array = jax.Array

# torchvision's MobileNetV3 norm_layer: BatchNorm2d(eps=0.001, momentum=0.01).
BN_MOMENTUM = 0.99
BN_EPSILON = 1e-3


class BlockConfig(NamedTuple):
  """One inverted residual block (a row of torchvision's `bneck_conf`)."""
  in_channels: int
  kernel: int
  expanded: int
  out_channels: int
  use_se: bool
  use_hardswish: bool
  strides: int


# torchvision `_mobilenet_v3_conf('mobilenet_v3_large')`, width 1.0, no
# reduced tail.
LARGE = (
    BlockConfig(16, 3, 16, 16, False, False, 1),
    BlockConfig(16, 3, 64, 24, False, False, 2),
    BlockConfig(24, 3, 72, 24, False, False, 1),
    BlockConfig(24, 5, 72, 40, True, False, 2),
    BlockConfig(40, 5, 120, 40, True, False, 1),
    BlockConfig(40, 5, 120, 40, True, False, 1),
    BlockConfig(40, 3, 240, 80, False, True, 2),
    BlockConfig(80, 3, 200, 80, False, True, 1),
    BlockConfig(80, 3, 184, 80, False, True, 1),
    BlockConfig(80, 3, 184, 80, False, True, 1),
    BlockConfig(80, 3, 480, 112, True, True, 1),
    BlockConfig(112, 3, 672, 112, True, True, 1),
    BlockConfig(112, 5, 672, 160, True, True, 2),
    BlockConfig(160, 5, 960, 160, True, True, 1),
    BlockConfig(160, 5, 960, 160, True, True, 1),
)

# A small stand-in (about 30k parameters with an LR-ASPP head) with the same
# five stages, for tests and CPU runs. Not a torchvision model.
TINY = (
    BlockConfig(8, 3, 8, 8, False, False, 1),
    BlockConfig(8, 3, 24, 16, False, False, 2),
    BlockConfig(16, 5, 48, 16, True, False, 2),
    BlockConfig(16, 3, 64, 24, False, True, 2),
    BlockConfig(24, 5, 96, 32, True, True, 2),
)


class SqueezeExcitation(nn.Module):
  """Channel gating: avg-pool -> 1x1 (ReLU) -> 1x1 (hard sigmoid) -> scale.

  Children `fc1`, `fc2` (with biases), as torchvision's SqueezeExcitation.
  """
  squeeze_channels: int
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[B, H, W, C] -> [B, H, W, C]."""
    s = layers.global_avg_pool(x)
    s = nn.relu(layers.Conv(self.squeeze_channels, 1, dtype=self.dtype,
                            name='fc1')(s))
    s = layers.Conv(x.shape[-1], 1, dtype=self.dtype, name='fc2')(s)
    return x * jax.nn.hard_sigmoid(s)


class InvertedResidual(nn.Module):
  """Expand (1x1) -> depthwise kxk -> [SE] -> linear projection (1x1)."""
  config: BlockConfig
  strides: int = 1
  dilation: int = 1
  dtype: layers.Dtype = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    """[B, H, W, in] -> [B, H/strides, W/strides, out_channels]."""
    cfg = self.config
    if x.shape[-1] != cfg.in_channels:
      raise ValueError(f'Block {self.name} expects {cfg.in_channels} input '
                       f'channels, got {x.shape[-1]}.')
    act = jax.nn.hard_swish if cfg.use_hardswish else nn.relu
    cna = lambda *a, **k: layers.ConvNormAct(
        *a, bn_momentum=BN_MOMENTUM, bn_epsilon=BN_EPSILON, dtype=self.dtype,
        axis_name=self.axis_name, **k)
    y = x
    if cfg.expanded != cfg.in_channels:
      y = cna(cfg.expanded, 1, activation=act, name='expand')(y, train=train)
    y = cna(cfg.expanded, cfg.kernel, strides=self.strides,
            dilation=self.dilation, groups=cfg.expanded, activation=act,
            name='depthwise')(y, train=train)
    if cfg.use_se:
      y = SqueezeExcitation(
          mobilenet_utils.make_divisible(cfg.expanded // 4, 8),
          dtype=self.dtype, name='se')(y)
    y = cna(cfg.out_channels, 1, activation=None, name='project')(y,
                                                                  train=train)
    # torchvision decides on the nominal stride, also when it is dilated away.
    if cfg.strides == 1 and cfg.in_channels == cfg.out_channels:
      y = x + y
    return y


class MobileNetV3(nn.Module):
  """MobileNetV3 feature extractor; see the module docstring for outputs.

  Attributes:
    config: the inverted residual blocks (`LARGE` or `TINY`).
    output_stride: 8, 16 (torchvision's dilated=True) or 32.
  """
  config: Sequence[BlockConfig] = LARGE
  output_stride: int = 16
  dtype: layers.Dtype = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, images: Array, *, train: bool) -> dict[str, Array]:
    """Maps images [B, H, W, 3] to the dict of stage outputs [B, h, w, C]."""
    plan = mobilenet_utils.plan_blocks(
        [c.strides for c in self.config], self.output_stride,
        first_keeps_dilation=False)
    cna = lambda *a, **k: layers.ConvNormAct(
        *a, activation=jax.nn.hard_swish, bn_momentum=BN_MOMENTUM,
        bn_epsilon=BN_EPSILON, dtype=self.dtype, axis_name=self.axis_name,
        **k)

    x = cna(self.config[0].in_channels, 3, strides=2,
            name='features_0')(images, train=train)
    features = {'stem': x}
    for i, (cfg, p) in enumerate(zip(self.config, plan)):
      x = InvertedResidual(cfg, strides=p.strides, dilation=p.dilation,
                           dtype=self.dtype, axis_name=self.axis_name,
                           name=f'features_{i + 1}')(x, train=train)
      if p.stage == 3 and 'stage3_first' not in features:
        features['stage3_first'] = x
      features[f'stage{p.stage}'] = x
    # The last 1x1 convolution (6x the last block's width) ends the last stage.
    x = cna(6 * self.config[-1].out_channels, 1,
            name=f'features_{len(self.config) + 1}')(x, train=train)
    features[f'stage{plan[-1].stage}'] = x
    return features
