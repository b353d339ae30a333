"""Segmentation heads: FCN, DeepLabV3 (ASPP), DeepLabV3+ decoder, LR-ASPP.

Each head returns `(logits, features)`: logits [B, h, w, num_classes] at the
resolution of its (finest) input, and the features the last classifier
convolution reads (before dropout where there is one, so that feature
distillation does not see the dropout noise). Module names follow torchvision
(`ASPP.convs_0` .. `convs_4`, `project`; `LRASPPHead.cbr`, `scale`,
`low_classifier`, `high_classifier`); inside torchvision's `nn.Sequential`
heads the children are named by role instead of by index.

Dropout needs a 'dropout' rng when `train=True`.
"""

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdseg.models import layers

Array = jax.Array


class FCNHead(nn.Module):
  """Conv3x3 (in/4, no bias) -> BN -> ReLU -> Dropout(0.1) -> Conv1x1."""
  num_classes: int
  dtype: layers.Dtype = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> tuple[Array, Array]:
    """[B, h, w, Cin] -> logits [B, h, w, classes], features [.., Cin // 4]."""
    inter = x.shape[-1] // 4
    feats = layers.ConvNormAct(inter, 3, dtype=self.dtype,
                               axis_name=self.axis_name, name='block')(
                                   x, train=train)
    y = nn.Dropout(0.1, deterministic=not train)(feats)
    logits = layers.Conv(self.num_classes, 1, dtype=self.dtype,
                         name='classifier')(y)
    return logits, feats


class ASPP(nn.Module):
  """Atrous spatial pyramid pooling, torchvision's `ASPP`.

  Five branches on the same input (1x1; three dilated 3x3; image pooling),
  each Conv (no bias) -> BN -> ReLU, concatenated and projected by a 1x1
  convolution -> BN -> ReLU -> Dropout(0.5).
  """
  atrous_rates: Sequence[int] = (12, 24, 36)
  channels: int = 256
  dtype: layers.Dtype = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    """[B, h, w, Cin] -> [B, h, w, channels]."""
    cna = lambda *a, **k: layers.ConvNormAct(
        self.channels, *a, dtype=self.dtype, axis_name=self.axis_name, **k)
    branches = [cna(1, name='convs_0')(x, train=train)]
    for i, rate in enumerate(self.atrous_rates):
      branches.append(cna(3, dilation=rate, name=f'convs_{i + 1}')(
          x, train=train))
    pooled = cna(1, name=f'convs_{len(self.atrous_rates) + 1}')(
        layers.global_avg_pool(x), train=train)
    # Bilinear up-sampling of a 1x1 map (align_corners=False) is a broadcast.
    branches.append(jnp.broadcast_to(pooled, branches[0].shape))
    y = cna(1, name='project')(jnp.concatenate(branches, axis=-1), train=train)
    return nn.Dropout(0.5, deterministic=not train)(y)


class DeepLabHead(nn.Module):
  """torchvision's `DeepLabHead`: ASPP -> Conv3x3 -> BN -> ReLU -> Conv1x1."""
  num_classes: int
  atrous_rates: Sequence[int] = (12, 24, 36)
  channels: int = 256
  dtype: layers.Dtype = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> tuple[Array, Array]:
    """[B, h, w, Cin] -> logits [B, h, w, classes], features [B, h, w, 256]."""
    y = ASPP(self.atrous_rates, self.channels, dtype=self.dtype,
             axis_name=self.axis_name, name='aspp')(x, train=train)
    feats = layers.ConvNormAct(self.channels, 3, dtype=self.dtype,
                               axis_name=self.axis_name, name='block')(
                                   y, train=train)
    logits = layers.Conv(self.num_classes, 1, dtype=self.dtype,
                         name='classifier')(feats)
    return logits, feats


class DeepLabV3PlusHead(nn.Module):
  """DeepLabV3+ decoder (Chen et al., 2018).

  ASPP on the high-level map; the low-level map is reduced to 48 channels
  (1x1 conv, BN, ReLU); the ASPP output is bilinearly up-sampled to the
  low-level resolution and concatenated in front of it (channel order
  [aspp, low], as the paper's reference implementation), refined by two
  Conv3x3 (256, no bias) -> BN -> ReLU and classified by a 1x1 convolution.
  """
  num_classes: int
  atrous_rates: Sequence[int] = (6, 12, 18)
  channels: int = 256
  low_channels: int = 48
  dtype: layers.Dtype = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, low: Array, high: Array, *,
               train: bool) -> tuple[Array, Array]:
    """low [B, h, w, Cl], high [B, h', w', Ch] -> logits [B, h, w, classes].

    Also returns the refined features [B, h, w, channels].
    """
    cna = lambda *a, **k: layers.ConvNormAct(
        *a, dtype=self.dtype, axis_name=self.axis_name, **k)
    y = ASPP(self.atrous_rates, self.channels, dtype=self.dtype,
             axis_name=self.axis_name, name='aspp')(high, train=train)
    y = layers.resize_bilinear(y, low.shape[1:3])
    low = cna(self.low_channels, 1, name='low_project')(low, train=train)
    y = jnp.concatenate([y, low], axis=-1)
    y = cna(self.channels, 3, name='refine_0')(y, train=train)
    feats = cna(self.channels, 3, name='refine_1')(y, train=train)
    logits = layers.Conv(self.num_classes, 1, dtype=self.dtype,
                         name='classifier')(feats)
    return logits, feats


class LRASPPHead(nn.Module):
  """torchvision's `LRASPPHead` (Lite R-ASPP, MobileNetV3 paper).

  x = ReLU(BN(Conv1x1(high))) * sigmoid(Conv1x1(avgpool(high))), up-sampled
  bilinearly to the low-level resolution; logits = Conv1x1(low) + Conv1x1(x).
  """
  num_classes: int
  inter_channels: int = 128
  dtype: layers.Dtype = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, low: Array, high: Array, *,
               train: bool) -> tuple[Array, Array]:
    """low [B, h, w, Cl], high [B, h', w', Ch] -> logits [B, h, w, classes].

    Also returns the gated, up-sampled high-level features
    [B, h, w, inter_channels] that the high classifier reads.
    """
    x = layers.ConvNormAct(self.inter_channels, 1, dtype=self.dtype,
                           axis_name=self.axis_name, name='cbr')(
                               high, train=train)
    s = layers.Conv(self.inter_channels, 1, use_bias=False, dtype=self.dtype,
                    name='scale')(layers.global_avg_pool(high))
    x = layers.resize_bilinear(x * nn.sigmoid(s), low.shape[1:3])
    conv1x1 = lambda name: layers.Conv(self.num_classes, 1, dtype=self.dtype,
                                       name=name)
    logits = conv1x1('low_classifier')(low) + conv1x1('high_classifier')(x)
    return logits, x
