"""Building blocks shared by every model of the zoo.

Layout: activations are NHWC `[B, H, W, C]`; convolution kernels are HWIO
`[kh, kw, Cin // groups, Cout]`, i.e. PyTorch's `[Cout, Cin // groups, kh, kw]`
transposed by `(2, 3, 1, 0)`, so that torchvision checkpoints convert
one-to-one.

Parameters are always stored in float32. Each module has a `dtype` attribute,
the computation dtype: inputs and kernels are cast to it before the
convolution (so bfloat16 runs use bfloat16 matmuls while the optimiser keeps
float32 master weights).
"""

from typing import Any, Callable, Optional, Sequence, Union

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from kdseg.ops import conv as conv_ops

Array = jax.Array
Dtype = Any
IntOrPair = Union[int, Sequence[int]]

# PyTorch's BatchNorm2d(momentum=0.1, eps=1e-5); flax's momentum is the weight
# of the *old* running statistic, hence 1 - 0.1.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# He-normal with fan_out, as torchvision initialises ResNet and MobileNet
# convolutions (`kaiming_normal_(mode='fan_out')`, which is not truncated).
# Pretrained weights replace it anyway; it only matters for training from
# scratch.
he_normal_fan_out = nn.initializers.variance_scaling(
    2.0, 'fan_out', 'normal')


def _pair(value: IntOrPair) -> tuple[int, int]:
  if isinstance(value, int):
    return (value, value)
  value = tuple(int(v) for v in value)
  if len(value) != 2:
    raise ValueError(f'Expected an int or a pair of ints, got {value}.')
  return value


class Conv(nn.Module):
  """2-D convolution with PyTorch's explicit, symmetric padding.

  Every convolution of the zoo goes through this module, which computes with
  `kdseg.ops.conv.conv2d`. By default the padding is
  `dilation * (kernel - 1) // 2` on each side, like torchvision's layers: a
  stride-2 convolution then samples the same pixels as PyTorch's, which
  'SAME' padding does not guarantee (it pads more on the bottom/right).

  Attributes:
    features: output channels `Cout`.
    kernel_size: `k` or `(kh, kw)`.
    strides: `s` or `(sh, sw)`.
    dilation: `d` or `(dh, dw)`.
    padding: `None` for the PyTorch-style default above, or an int / pair of
      ints giving the symmetric padding of each spatial dimension.
    groups: feature groups (`groups == Cin` for a depthwise convolution).
    use_bias: whether to add a `bias` [Cout].
    dtype: computation dtype.
    param_dtype: storage dtype of `kernel` and `bias`.
  """
  features: int
  kernel_size: IntOrPair = 1
  strides: IntOrPair = 1
  dilation: IntOrPair = 1
  padding: Optional[IntOrPair] = None
  groups: int = 1
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Callable[..., Array] = he_normal_fan_out
  bias_init: Callable[..., Array] = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Maps `x` [B, H, W, Cin] to [B, H', W', Cout]."""
    kh, kw = _pair(self.kernel_size)
    dh, dw = _pair(self.dilation)
    cin = x.shape[-1]
    if cin % self.groups or self.features % self.groups:
      raise ValueError(
          f'Conv {self.name}: {cin} input and {self.features} output channels '
          f'must both be divisible by groups={self.groups}.')
    if self.padding is None:
      ph, pw = dh * (kh - 1) // 2, dw * (kw - 1) // 2
    else:
      ph, pw = _pair(self.padding)
    kernel = self.param('kernel', self.kernel_init,
                        (kh, kw, cin // self.groups, self.features),
                        self.param_dtype)
    y = conv_ops.conv2d(
        x.astype(self.dtype), kernel.astype(self.dtype),
        strides=_pair(self.strides), padding=((ph, ph), (pw, pw)),
        dilation=(dh, dw), groups=self.groups)
    if self.use_bias:
      bias = self.param('bias', self.bias_init, (self.features,),
                        self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


def batch_norm(*, train: bool, dtype: Dtype, axis_name: Optional[str],
               momentum: float = BN_MOMENTUM, epsilon: float = BN_EPSILON,
               name: Optional[str] = None) -> nn.BatchNorm:
  """Returns a BatchNorm with PyTorch's defaults; call inside a compact method.

  `axis_name` (e.g. 'data') averages the batch statistics across devices when
  the model runs under `shard_map`/`pmap`; None keeps them per device.
  Unlike PyTorch, flax updates the running variance with the biased batch
  variance (a factor n / (n - 1) apart, negligible for n = B * H * W pixels).
  """
  return nn.BatchNorm(use_running_average=not train, momentum=momentum,
                      epsilon=epsilon, dtype=dtype, axis_name=axis_name,
                      name=name)


class ConvNormAct(nn.Module):
  """Conv -> BatchNorm -> activation (torchvision's `Conv2dNormActivation`).

  Children are named `conv` and `bn`. `activation=None` leaves the output
  linear (e.g. the projection of an inverted residual block).
  """
  features: int
  kernel_size: IntOrPair = 1
  strides: IntOrPair = 1
  dilation: IntOrPair = 1
  groups: int = 1
  use_bias: bool = False
  activation: Optional[Callable[[Array], Array]] = nn.relu
  bn_momentum: float = BN_MOMENTUM
  bn_epsilon: float = BN_EPSILON
  dtype: Dtype = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    """Maps `x` [B, H, W, Cin] to [B, H', W', features]."""
    x = Conv(self.features, self.kernel_size, strides=self.strides,
             dilation=self.dilation, groups=self.groups,
             use_bias=self.use_bias, dtype=self.dtype, name='conv')(x)
    x = batch_norm(train=train, dtype=self.dtype, axis_name=self.axis_name,
                   momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                   name='bn')(x)
    if self.activation is not None:
      x = self.activation(x)
    return x


def global_avg_pool(x: Array) -> Array:
  """[B, H, W, C] -> [B, 1, 1, C] (PyTorch's `AdaptiveAvgPool2d(1)`)."""
  # jnp.mean accumulates low-precision inputs in float32.
  return jnp.mean(x, axis=(1, 2), keepdims=True)


def _source_taps(in_size: int, out_size: int):
  """Left/right source indices and weights of each output pixel (one axis).

  PyTorch's `upsample_bilinear2d(align_corners=False)` without antialiasing:
  the source coordinate of output pixel `i` is `(i + 0.5) * in / out - 0.5`,
  clamped below at 0; it interpolates between its floor and the next pixel,
  clamped to the border. The same formula holds for down-sampling, where it
  reads only the two nearest pixels (no low-pass filter).
  """
  src = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size)
  src = np.maximum(src - 0.5, 0.0)
  left = np.minimum(np.floor(src).astype(np.int32), in_size - 1)
  right = np.minimum(left + 1, in_size - 1)
  frac = src - left
  return left, right, frac


def _upsample_axis(x: Array, factor: int, axis: int) -> Array:
  """`_resize_axis` to `factor` times the size, with slices instead of gathers.

  Output pixel `factor * k + r` reads the same two neighbours, relative to k,
  with the same weight, for every k (its source is `k + (r + 0.5) / factor -
  0.5`). So each phase r is a weighted sum of two shifted copies of the
  edge-padded input, and the phases interleave. Unlike `jnp.take`, whose
  gradient is a scatter-add (slow on CPU), this differentiates to slices and
  adds.
  """
  n = x.shape[axis]
  first = lax.slice_in_dim(x, 0, 1, axis=axis)
  last = lax.slice_in_dim(x, n - 1, n, axis=axis)
  padded = jnp.concatenate([first, x, last], axis=axis)  # x[clip(j - 1)]
  phases = []
  for r in range(factor):
    offset = (r + 0.5) / factor - 0.5
    # Left neighbour k (offset >= 0) or k - 1 (offset < 0, clamped at 0 by
    # the edge padding); the right one follows it, clamped at n - 1.
    start, frac = (1, offset) if offset >= 0 else (0, 1.0 + offset)
    lo = lax.slice_in_dim(padded, start, start + n, axis=axis)
    hi = lax.slice_in_dim(padded, start + 1, start + 1 + n, axis=axis)
    phases.append(lo + frac * (hi - lo))
  out = jnp.stack(phases, axis=axis + 1)
  return out.reshape(x.shape[:axis] + (n * factor,) + x.shape[axis + 1:])


def _downsample_axis(x: Array, factor: int, axis: int) -> Array:
  """`_resize_axis` to 1 / `factor` of the size, with strided slices.

  Output pixel i reads source `factor * i + (factor - 1) / 2`: one pixel
  for an odd factor, the mean of two neighbours for an even one.
  """
  out_size = x.shape[axis] // factor
  start = (factor - 1) // 2
  stop = start + factor * (out_size - 1) + 1
  lo = lax.slice_in_dim(x, start, stop, stride=factor, axis=axis)
  if factor % 2:
    return lo
  hi = lax.slice_in_dim(x, start + 1, stop + 1, stride=factor, axis=axis)
  return lo + 0.5 * (hi - lo)


def _resize_axis(x: Array, out_size: int, axis: int) -> Array:
  in_size = x.shape[axis]
  if in_size == out_size:
    return x
  # Integer factors (logits at stride 4/8/16 up to the labels) avoid gathers.
  if out_size % in_size == 0:
    return _upsample_axis(x, out_size // in_size, axis)
  if in_size % out_size == 0:
    return _downsample_axis(x, in_size // out_size, axis)
  return gather_resize_axis(x, out_size, axis)


def gather_resize_axis(x: Array, out_size: int, axis: int) -> Array:
  """`_resize_axis` for any sizes: two gathers per output pixel."""
  left, right, frac = _source_taps(x.shape[axis], out_size)
  # Broadcast the per-pixel weights along `axis` only.
  shape = [1] * x.ndim
  shape[axis] = out_size
  frac = jnp.asarray(frac.reshape(shape), dtype=x.dtype)
  x_left = jnp.take(x, left, axis=axis)
  x_right = jnp.take(x, right, axis=axis)
  return x_left + frac * (x_right - x_left)


def resize_bilinear(x: Array, size: Sequence[int]) -> Array:
  """Bilinear resize of `x` [B, H, W, C] to [B, h, w, C].

  Matches PyTorch's `F.interpolate(x, size, mode='bilinear',
  align_corners=False, antialias=False)` for up- and down-sampling alike
  (unlike `jax.image.resize`, which low-pass filters when down-sampling).
  Each output pixel reads at most 2x2 inputs, so the cost is linear in the
  output size. Keeps the dtype of `x`.
  """
  if x.ndim != 4:
    raise ValueError(f'resize_bilinear expects [B, H, W, C]; got shape '
                     f'{tuple(x.shape)}.')
  h, w = (int(s) for s in size)
  if h <= 0 or w <= 0:
    raise ValueError(f'Output size must be positive, got {(h, w)}.')
  return _resize_axis(_resize_axis(x, h, axis=1), w, axis=2)


def check_images(images: Array) -> None:
  """Raises ValueError unless `images` is a NHWC RGB batch [B, H, W, 3]."""
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError('Expected images of shape [B, H, W, 3] (NHWC, RGB); got '
                     f'shape {tuple(images.shape)}.')
