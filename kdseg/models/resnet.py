"""ResNet backbones (torchvision layout, v1.5), optionally dilated.

The module and parameter names follow torchvision (`conv1`, `bn1`,
`layer3_0/conv2`, `layer3_0/downsample_conv`, ...) with `.` replaced by `_`,
so that a torchvision state_dict maps one-to-one. The classifier (`fc`) is not
part of the backbone.

Feature maps returned by `ResNet` (strides for output_stride=8/16/32):

  'stem'    after conv1/bn1/relu/maxpool, stride 4, `stem_width` channels.
  'layer1'  stride 4.
  'layer2'  stride 8.
  'layer3'  stride 8 / 16 / 16.
  'layer4'  stride 8 / 16 / 32.
"""

from typing import ClassVar, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdseg.models import layers

Array = jax.Array


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with a residual connection (ResNet-18/34).

  torchvision refuses dilation here; we allow it (both 3x3 convolutions use
  it) so that ResNet-18/34 can serve as dilated segmentation backbones.
  """
  expansion: ClassVar[int] = 1

  planes: int
  strides: int = 1
  dilation: int = 1
  downsample: bool = False
  dtype: layers.Dtype = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    """[B, H, W, Cin] -> [B, H/strides, W/strides, planes]."""
    conv = lambda *a, **k: layers.Conv(*a, use_bias=False, dtype=self.dtype,
                                       **k)
    norm = lambda name: layers.batch_norm(
        train=train, dtype=self.dtype, axis_name=self.axis_name, name=name)
    y = conv(self.planes, 3, strides=self.strides, dilation=self.dilation,
             name='conv1')(x)
    y = nn.relu(norm('bn1')(y))
    y = conv(self.planes, 3, dilation=self.dilation, name='conv2')(y)
    y = norm('bn2')(y)
    if self.downsample:
      x = conv(self.planes * self.expansion, 1, strides=self.strides,
               name='downsample_conv')(x)
      x = norm('downsample_bn')(x)
    return nn.relu(y + x)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 -> 1x1 bottleneck (ResNet-50/101), stride on the 3x3 (v1.5)."""
  expansion: ClassVar[int] = 4

  planes: int
  strides: int = 1
  dilation: int = 1
  downsample: bool = False
  dtype: layers.Dtype = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    """[B, H, W, Cin] -> [B, H/strides, W/strides, 4 * planes]."""
    conv = lambda *a, **k: layers.Conv(*a, use_bias=False, dtype=self.dtype,
                                       **k)
    norm = lambda name: layers.batch_norm(
        train=train, dtype=self.dtype, axis_name=self.axis_name, name=name)
    y = nn.relu(norm('bn1')(conv(self.planes, 1, name='conv1')(x)))
    y = conv(self.planes, 3, strides=self.strides, dilation=self.dilation,
             name='conv2')(y)
    y = nn.relu(norm('bn2')(y))
    y = conv(self.planes * self.expansion, 1, name='conv3')(y)
    y = norm('bn3')(y)
    if self.downsample:
      x = conv(self.planes * self.expansion, 1, strides=self.strides,
               name='downsample_conv')(x)
      x = norm('downsample_bn')(x)
    return nn.relu(y + x)


def dilate_stages(output_stride: int) -> tuple[bool, bool, bool]:
  """torchvision's `replace_stride_with_dilation` for layer2..layer4."""
  if output_stride not in (8, 16, 32):
    raise ValueError(f'output_stride must be 8, 16 or 32; got {output_stride}.')
  return (False, output_stride == 8, output_stride <= 16)


class ResNet(nn.Module):
  """ResNet feature extractor; see the module docstring for the outputs.

  Attributes:
    block: `BasicBlock` or `Bottleneck`.
    stage_sizes: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
    widths: `planes` of each stage (torchvision: 64, 128, 256, 512).
    stem_width: channels of the 7x7 stem convolution.
    output_stride: 8, 16 or 32. Below 32, the last stages trade their stride
      for dilation exactly like torchvision's `_make_layer`: the first block
      of a dilated stage keeps the previous dilation and the following blocks
      use the new one (8 -> layer3 dilation 2, layer4 dilation 4).
  """
  block: type[nn.Module]
  stage_sizes: Sequence[int]
  widths: Sequence[int] = (64, 128, 256, 512)
  stem_width: int = 64
  output_stride: int = 8
  dtype: layers.Dtype = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, images: Array, *, train: bool) -> dict[str, Array]:
    """Maps images [B, H, W, 3] to the dict of stage outputs [B, h, w, C]."""
    dilate = (False,) + dilate_stages(self.output_stride)
    x = layers.Conv(self.stem_width, 7, strides=2, use_bias=False,
                    dtype=self.dtype, name='conv1')(images)
    x = layers.batch_norm(train=train, dtype=self.dtype,
                          axis_name=self.axis_name, name='bn1')(x)
    x = nn.relu(x)
    # PyTorch's MaxPool2d(3, 2, padding=1) pads with -inf, as flax does.
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    features = {'stem': x}

    dilation = 1
    in_channels = self.stem_width
    for i, (planes, num_blocks) in enumerate(
        zip(self.widths, self.stage_sizes)):
      strides = 1 if i == 0 else 2
      previous_dilation = dilation
      if dilate[i]:
        dilation *= strides
        strides = 1
      out_channels = planes * self.block.expansion
      block = lambda **k: self.block(planes=planes, dtype=self.dtype,
                                     axis_name=self.axis_name, **k)
      x = block(strides=strides, dilation=previous_dilation,
                downsample=strides != 1 or in_channels != out_channels,
                name=f'layer{i + 1}_0')(x, train=train)
      for j in range(1, num_blocks):
        x = block(dilation=dilation, name=f'layer{i + 1}_{j}')(x, train=train)
      in_channels = out_channels
      features[f'layer{i + 1}'] = x
    return features


def resnet18(**kwargs) -> ResNet:
  return ResNet(block=BasicBlock, stage_sizes=(2, 2, 2, 2), **kwargs)


def resnet34(**kwargs) -> ResNet:
  return ResNet(block=BasicBlock, stage_sizes=(3, 4, 6, 3), **kwargs)


def resnet50(**kwargs) -> ResNet:
  return ResNet(block=Bottleneck, stage_sizes=(3, 4, 6, 3), **kwargs)


def resnet101(**kwargs) -> ResNet:
  return ResNet(block=Bottleneck, stage_sizes=(3, 4, 23, 3), **kwargs)
