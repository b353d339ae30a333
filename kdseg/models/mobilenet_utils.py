"""Channel rounding and stride/dilation planning shared by the MobileNets."""

from typing import NamedTuple, Optional, Sequence


def make_divisible(value: float, divisor: int = 8,
                   min_value: Optional[int] = None) -> int:
  """Rounds `value` to a multiple of `divisor`, as torchvision's MobileNets.

  Never rounds down by more than 10%.
  """
  if min_value is None:
    min_value = divisor
  rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * value:
    rounded += divisor
  return rounded


class BlockPlan(NamedTuple):
  strides: int       # stride actually applied by the block
  dilation: int      # dilation of its depthwise convolution
  stage: int         # k such that the undilated network is at stride 2**k


def plan_blocks(block_strides: Sequence[int], output_stride: int, *,
                first_keeps_dilation: bool,
                stem_stride: int = 2) -> list[BlockPlan]:
  """Replaces the strides that would exceed `output_stride` by dilation.

  Args:
    block_strides: the nominal stride of each block, in order.
    output_stride: 8, 16 or 32, the stride of the last block's output.
    first_keeps_dilation: if True, the block that gives up its stride keeps
      the previous dilation and only the following blocks use the new one
      (the ResNet `_make_layer` convention, used by DeepLabV3-MobileNetV2
      ports). If False, that block already uses the new dilation, as in
      torchvision's `mobilenet_v3_large(dilated=True)`.
    stem_stride: stride of the layers before the first block.

  Returns:
    One `BlockPlan` per block.
  """
  if output_stride not in (8, 16, 32):
    raise ValueError(f'output_stride must be 8, 16 or 32; got {output_stride}.')
  current = nominal = stem_stride
  dilation = 1
  plan = []
  for s in block_strides:
    nominal *= s
    if s > 1 and current * s > output_stride:
      previous, dilation = dilation, dilation * s
      plan.append(BlockPlan(1, previous if first_keeps_dilation else dilation,
                            nominal.bit_length() - 1))
    else:
      current *= s
      plan.append(BlockPlan(s, dilation, nominal.bit_length() - 1))
  return plan
