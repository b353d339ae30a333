"""The name table: torchvision state_dict keys -> kdseg variable paths.

A torchvision key is `<module>.<tensor>`, e.g. `backbone.layer1.0.conv1.weight`;
kdseg keeps the same tensor at `<collection>/<module path>/<leaf>`, e.g.
`params/backbone/layer1_0/conv1/kernel`. Each function below lists the layers
of one architecture as `(torchvision module, kdseg module path, kind)` in
torchvision's order, and `TENSORS` names the tensors of each kind of layer on
both sides. `table` expands a list of layers into the full key -> path map.

kdseg names a module inside torchvision's `nn.Sequential`s by its role
(`conv`/`bn`, `expand`/`depthwise`/`project`, `block`/`classifier`) rather
than by its index; the index arithmetic lives here and nowhere else.
"""

from typing import Sequence

# (torchvision module, kdseg module path, kind of layer)
Layer = tuple[str, str, str]

# kind -> {torchvision tensor name: (kdseg collection, kdseg leaf name)}
TENSORS = {
    'conv': {'weight': ('params', 'kernel')},
    'conv+bias': {'weight': ('params', 'kernel'), 'bias': ('params', 'bias')},
    'bn': {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
           'running_mean': ('batch_stats', 'mean'),
           'running_var': ('batch_stats', 'var')},
}

# PyTorch's BatchNorm counts its updates; flax's needs no counter.
IGNORED_TENSORS = ('num_batches_tracked',)


def table(layers: Sequence[Layer]) -> dict[str, str]:
  """Full map {torchvision key: kdseg path 'collection/module/.../leaf'}."""
  out = {}
  for tv_module, kd_module, kind in layers:
    for tensor, (collection, leaf) in TENSORS[kind].items():
      out[f'{tv_module}.{tensor}'] = f'{collection}/{kd_module}/{leaf}'
  return out


def conv_bn(tv: str, kd: str) -> list[Layer]:
  """Conv2dNormActivation / ASPPConv ('0' conv, '1' bn) -> ConvNormAct."""
  return [(f'{tv}.0', f'{kd}/conv', 'conv'), (f'{tv}.1', f'{kd}/bn', 'bn')]


# Backbones. `tv` is the prefix of torchvision's keys: '' or 'features.' in a
# classification model, 'backbone.' in a segmentation model. kdseg always
# keeps the backbone under 'backbone'.


def resnet(stage_sizes: Sequence[int], *, bottleneck: bool,
           tv: str) -> list[Layer]:
  """ResNet trunk, conv1 .. layer4 (the classifier `fc` is not included)."""
  out = [(f'{tv}conv1', 'backbone/conv1', 'conv'),
         (f'{tv}bn1', 'backbone/bn1', 'bn')]
  convs = 3 if bottleneck else 2
  for stage, num_blocks in enumerate(stage_sizes, start=1):
    for b in range(num_blocks):
      t, k = f'{tv}layer{stage}.{b}', f'backbone/layer{stage}_{b}'
      for c in range(1, convs + 1):
        out += [(f'{t}.conv{c}', f'{k}/conv{c}', 'conv'),
                (f'{t}.bn{c}', f'{k}/bn{c}', 'bn')]
      # A stage's first block changes stride or width, except layer1 of
      # ResNet-18/34 (64 -> 64 channels at stride 1).
      if b == 0 and (stage > 1 or bottleneck):
        out += [(f'{t}.downsample.0', f'{k}/downsample_conv', 'conv'),
                (f'{t}.downsample.1', f'{k}/downsample_bn', 'bn')]
  return out


def mobilenet_v2(setting: Sequence[tuple[int, int, int, int]], *,
                 tv: str) -> list[Layer]:
  """MobileNetV2 features.0 .. features.17 (features.18 is not in kdseg).

  `setting` holds torchvision's (expand ratio, channels, repeats, stride).
  A block's `conv` is [expand (conv_bn)], depthwise (conv_bn), project conv,
  project bn; the expansion is absent when the ratio is 1.
  """
  out = conv_bn(f'{tv}0', 'backbone/features_0')
  i = 1
  for expand_ratio, _, repeats, _ in setting:
    for _ in range(repeats):
      t, k = f'{tv}{i}.conv', f'backbone/features_{i}'
      j = 0
      if expand_ratio != 1:
        out += conv_bn(f'{t}.0', f'{k}/expand')
        j = 1
      out += conv_bn(f'{t}.{j}', f'{k}/depthwise')
      out += [(f'{t}.{j + 1}', f'{k}/project/conv', 'conv'),
              (f'{t}.{j + 2}', f'{k}/project/bn', 'bn')]
      i += 1
  return out


def mobilenet_v3(config: Sequence, *, tv: str) -> list[Layer]:
  """MobileNetV3 features.0 .. features.<last> (the final 1x1 included).

  `config` is a sequence of `kdseg.models.mobilenet_v3.BlockConfig`. A
  block's `block` is [expand], depthwise, [se], project, numbered in order.
  """
  out = conv_bn(f'{tv}0', 'backbone/features_0')
  for i, cfg in enumerate(config, start=1):
    t, k = f'{tv}{i}.block', f'backbone/features_{i}'
    parts = (['expand'] if cfg.expanded != cfg.in_channels else []) + (
        ['depthwise'] + (['se'] if cfg.use_se else []) + ['project'])
    for j, part in enumerate(parts):
      if part == 'se':
        out += [(f'{t}.{j}.fc1', f'{k}/se/fc1', 'conv+bias'),
                (f'{t}.{j}.fc2', f'{k}/se/fc2', 'conv+bias')]
      else:
        out += conv_bn(f'{t}.{j}', f'{k}/{part}')
  last = len(config) + 1
  return out + conv_bn(f'{tv}{last}', f'backbone/features_{last}')


# Segmentation heads; `tv` and `kd` name the head's module on each side.


def fcn_head(tv: str, kd: str) -> list[Layer]:
  """FCNHead: 0 conv, 1 bn, 2 relu, 3 dropout, 4 classifier conv."""
  return [(f'{tv}.0', f'{kd}/block/conv', 'conv'),
          (f'{tv}.1', f'{kd}/block/bn', 'bn'),
          (f'{tv}.4', f'{kd}/classifier', 'conv+bias')]


def deeplab_head(tv: str, kd: str) -> list[Layer]:
  """DeepLabHead: 0 ASPP, 1 conv, 2 bn, 3 relu, 4 classifier conv.

  In ASPP, `convs.0` .. `convs.3` are conv/bn pairs, `convs.4` is the image
  pooling branch (0 pool, 1 conv, 2 bn, 3 relu) and `project` a conv/bn pair.
  """
  a, ka = f'{tv}.0', f'{kd}/aspp'
  out = []
  for i in range(4):
    out += conv_bn(f'{a}.convs.{i}', f'{ka}/convs_{i}')
  out += [(f'{a}.convs.4.1', f'{ka}/convs_4/conv', 'conv'),
          (f'{a}.convs.4.2', f'{ka}/convs_4/bn', 'bn')]
  out += conv_bn(f'{a}.project', f'{ka}/project')
  return out + [(f'{tv}.1', f'{kd}/block/conv', 'conv'),
                (f'{tv}.2', f'{kd}/block/bn', 'bn'),
                (f'{tv}.4', f'{kd}/classifier', 'conv+bias')]


def lraspp_head(tv: str, kd: str) -> list[Layer]:
  """LRASPPHead: cbr (conv/bn), scale (0 pool, 1 conv), two classifiers."""
  return conv_bn(f'{tv}.cbr', f'{kd}/cbr') + [
      (f'{tv}.scale.1', f'{kd}/scale', 'conv'),
      (f'{tv}.low_classifier', f'{kd}/low_classifier', 'conv+bias'),
      (f'{tv}.high_classifier', f'{kd}/high_classifier', 'conv+bias')]
