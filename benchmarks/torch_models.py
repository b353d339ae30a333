"""PyTorch twins of kdseg's tiny models, for the distillation benchmark.

`tiny_deeplabv3` and `tiny_fcn` rebuild `kdseg.models.zoo.tiny_deeplabv3` and
`kdseg.models.zoo.tiny_fcn` layer for layer in plain PyTorch (NCHW): the same
convolutions (channels, kernel sizes, strides, dilations, symmetric padding
`dilation * (k - 1) // 2`, bias only where kdseg has one), the same batch
norms (momentum 0.1, eps 1e-5), max pooling and dropout rates. Like kdseg's
models they return logits at the output stride (not up-sampled); the loss
up-samples them. `benchmarks/distill_step.py` asserts that the parameter
counts equal kdseg's, which catches any missing or resized layer.
"""

from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F


def _scaled(widths: Sequence[int], width: float) -> tuple[int, ...]:
  # Same rounding as kdseg.models.zoo._scaled, so that the widths agree.
  return tuple(max(1, int(round(w * width))) for w in widths)


def _atrous_rates(output_stride: int) -> tuple[int, int, int]:
  return {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}[output_stride]


def _conv(cin: int, cout: int, k: int, *, stride: int = 1, dilation: int = 1,
          bias: bool = False) -> nn.Conv2d:
  # kdseg pads dilation * (k - 1) // 2 on every side, as torchvision does.
  return nn.Conv2d(cin, cout, k, stride=stride,
                   padding=dilation * (k - 1) // 2, dilation=dilation,
                   bias=bias)


def _conv_bn_relu(cin: int, cout: int, k: int, dilation: int = 1
                  ) -> nn.Sequential:
  return nn.Sequential(_conv(cin, cout, k, dilation=dilation),
                       nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class BasicBlock(nn.Module):
  """kdseg's BasicBlock: both 3x3 convolutions use `dilation`."""

  def __init__(self, cin: int, planes: int, stride: int, dilation: int,
               downsample: bool):
    super().__init__()
    self.conv1 = _conv(cin, planes, 3, stride=stride, dilation=dilation)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = _conv(planes, planes, 3, dilation=dilation)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = (nn.Sequential(_conv(cin, planes, 1, stride=stride),
                                     nn.BatchNorm2d(planes))
                       if downsample else None)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = F.relu(self.bn1(self.conv1(x)), inplace=True)
    y = self.bn2(self.conv2(y))
    if self.downsample is not None:
      x = self.downsample(x)
    return F.relu(y + x, inplace=True)


class ResNet(nn.Module):
  """kdseg's ResNet with BasicBlocks, one block per stage; returns layer4.

  Dilation follows torchvision's `replace_stride_with_dilation` exactly as
  kdseg does: a dilated stage's first block keeps the previous dilation.
  """

  def __init__(self, stem: int, widths: Sequence[int], output_stride: int):
    super().__init__()
    dilate = (False, False, output_stride == 8, output_stride <= 16)
    self.conv1 = _conv(3, stem, 7, stride=2)
    self.bn1 = nn.BatchNorm2d(stem)
    self.maxpool = nn.MaxPool2d(3, 2, padding=1)
    blocks = []
    dilation, cin = 1, stem
    for i, planes in enumerate(widths):
      stride = 1 if i == 0 else 2
      previous = dilation
      if dilate[i]:
        dilation *= stride
        stride = 1
      blocks.append(BasicBlock(cin, planes, stride, previous,
                               downsample=stride != 1 or cin != planes))
      cin = planes
    self.layers = nn.Sequential(*blocks)
    self.out_channels = cin

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.maxpool(F.relu(self.bn1(self.conv1(x)), inplace=True))
    return self.layers(x)


class FCNHead(nn.Sequential):
  """Conv3x3 (in/4) -> BN -> ReLU -> Dropout(0.1) -> Conv1x1 (with bias)."""

  def __init__(self, cin: int, num_classes: int):
    inter = cin // 4
    super().__init__(_conv_bn_relu(cin, inter, 3), nn.Dropout(0.1),
                     _conv(inter, num_classes, 1, bias=True))


class ASPP(nn.Module):
  """1x1, three dilated 3x3 and image pooling branches, then a projection."""

  def __init__(self, cin: int, rates: Sequence[int], channels: int):
    super().__init__()
    self.convs = nn.ModuleList(
        [_conv_bn_relu(cin, channels, 1)]
        + [_conv_bn_relu(cin, channels, 3, dilation=r) for r in rates])
    self.pool = _conv_bn_relu(cin, channels, 1)
    self.project = nn.Sequential(
        _conv_bn_relu(channels * (len(rates) + 2), channels, 1),
        nn.Dropout(0.5))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    branches = [conv(x) for conv in self.convs]
    pooled = self.pool(F.adaptive_avg_pool2d(x, 1))
    # Bilinear up-sampling of a 1x1 map is a broadcast, as in kdseg.
    branches.append(pooled.expand_as(branches[0]))
    return self.project(torch.cat(branches, dim=1))


class DeepLabHead(nn.Sequential):
  """ASPP -> Conv3x3 -> BN -> ReLU -> Conv1x1 (with bias)."""

  def __init__(self, cin: int, num_classes: int, rates: Sequence[int],
               channels: int):
    super().__init__(ASPP(cin, rates, channels),
                     _conv_bn_relu(channels, channels, 3),
                     _conv(channels, num_classes, 1, bias=True))


class Segmenter(nn.Module):
  """Backbone -> head; returns logits at the output stride."""

  def __init__(self, backbone: nn.Module, head: nn.Module):
    super().__init__()
    self.backbone = backbone
    self.classifier = head
    # kdseg's initialisation (He-normal, fan_out; zero biases) rather than
    # PyTorch's default, so that both sides start from comparable losses.
    for module in self.modules():
      if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode='fan_out',
                                nonlinearity='relu')
        if module.bias is not None:
          nn.init.zeros_(module.bias)

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    return self.classifier(self.backbone(images))


def tiny_deeplabv3(*, num_classes: int, output_stride: int = 8,
                   width: float = 1.0) -> Segmenter:
  """Twin of `kdseg.models.zoo.tiny_deeplabv3` (no aux head)."""
  stem, *widths, channels = _scaled((8, 8, 16, 32, 32, 32), width)
  backbone = ResNet(stem, widths, output_stride)
  head = DeepLabHead(backbone.out_channels, num_classes,
                     _atrous_rates(output_stride), channels)
  return Segmenter(backbone, head)


def tiny_fcn(*, num_classes: int, output_stride: int = 8,
             width: float = 1.0) -> Segmenter:
  """Twin of `kdseg.models.zoo.tiny_fcn` (no aux head)."""
  stem, *widths = _scaled((8, 8, 8, 16, 16), width)
  backbone = ResNet(stem, widths, output_stride)
  return Segmenter(backbone, FCNHead(backbone.out_channels, num_classes))


def num_params(model: nn.Module) -> int:
  """Trainable parameters (not BN running statistics), as kdseg counts."""
  return sum(p.numel() for p in model.parameters())
