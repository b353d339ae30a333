"""SegNet (Badrinarayanan et al., 2017) with a VGG16-BN encoder.

Encoder: the 13 convolutions of VGG16-BN (torchvision `vgg16_bn.features`:
3x3 conv with bias -> BN -> ReLU) in 5 blocks, each followed by a 2x2 max
pool that records where its maxima were. Decoder: the mirror image; each
block starts by max-unpooling with the indices of the matching encoder pool
(no learned up-sampling), then 3x3 conv -> BN -> ReLU layers whose last one
narrows to the width of the next block. The final layer is a plain 3x3
convolution to the classes (the paper's `conv1_1_D`), so the logits have the
input's resolution (output stride 1).

Inputs need H and W divisible by 32 (five 2x2 pools).

Feature maps returned:

  'stage1' .. 'stage5'  encoder block outputs after pooling: strides 2, 4, 8,
                        16, 32; 64, 128, 256, 512, 512 channels.
  'head'                last decoder features, stride 1, 64 channels.
"""

from typing import ClassVar, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdseg.models import layers
from kdseg.models import pooling

Array = jax.Array

# Convolution widths of the VGG16 blocks.
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512),
                (512, 512, 512))


class SegNet(nn.Module):
  """SegNet-VGG16; see the module docstring.

  Children: `encoder_{b}_{i}` and `decoder_{b}_{i}` (ConvNormAct with bias)
  for block b (1..5) and layer i, then `classifier`.

  Attributes:
    num_classes: number of output classes.
    dtype: computation dtype; parameters stay float32.
    axis_name: batch-norm synchronisation axis, e.g. 'data', or None.
  """
  output_stride: ClassVar[int] = 1

  num_classes: int
  dtype: layers.Dtype = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, images: Array, *,
               train: bool) -> tuple[Array, dict[str, Array]]:
    """[B, H, W, 3] -> logits [B, H, W, classes], features."""
    layers.check_images(images)
    if images.shape[1] % 32 or images.shape[2] % 32:
      raise ValueError('SegNet needs H and W divisible by 32; got images of '
                       f'shape {tuple(images.shape)}.')
    # VGG convolutions have biases even though BN follows them; keeping them
    # lets torchvision's vgg16_bn weights convert one-to-one.
    cbr = lambda width, name: layers.ConvNormAct(
        width, 3, use_bias=True, dtype=self.dtype, axis_name=self.axis_name,
        name=name)

    features = {}
    indices = []
    x = images
    for b, widths in enumerate(VGG16_BLOCKS, start=1):
      for i, width in enumerate(widths):
        x = cbr(width, f'encoder_{b}_{i}')(x, train=train)
      x, idx = pooling.max_pool_2x2_with_indices(x)
      indices.append(idx)
      features[f'stage{b}'] = x

    for b in range(len(VGG16_BLOCKS), 0, -1):
      x = pooling.max_unpool_2x2(x, indices[b - 1])
      widths = VGG16_BLOCKS[b - 1]
      # The decoder of block b ends at the width of block b - 1 (64 for b=1,
      # where the classifier follows).
      out_width = VGG16_BLOCKS[b - 2][-1] if b > 1 else widths[-1]
      num_convs = len(widths) - 1 if b == 1 else len(widths)
      for i in range(num_convs):
        width = out_width if i == num_convs - 1 else widths[i]
        x = cbr(width, f'decoder_{b}_{i}')(x, train=train)
    features['head'] = x
    logits = layers.Conv(self.num_classes, 3, dtype=self.dtype,
                         name='classifier')(x)
    return logits.astype(jnp.float32), features
