"""Model zoo: torchvision parameter counts, shapes, strides and layer semantics.

Full-size models are only traced (`jax.eval_shape`), never materialised: XLA's
CPU convolutions are slow. Tiny models run for real, initialised with 'rbg'
keys because compiling threefry-based initialisers takes seconds on CPU.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdseg import models
from kdseg.models import layers
from kdseg.models import pooling

# torchvision.models.segmentation, num_classes=21, aux_loss=True (LR-ASPP has
# no auxiliary head): sum of parameter sizes, buffers excluded.
TORCHVISION_PARAMS = {
    'fcn_resnet50': 35_322_218,
    'fcn_resnet101': 54_314_346,
    'deeplabv3_resnet50': 42_004_074,
    'deeplabv3_resnet101': 60_996_202,
    'deeplabv3_mobilenet_v3_large': 11_029_328,
    'lraspp_mobilenet_v3_large': 3_221_538,
}

_RESNET_OS8 = {'stem': 4, 'layer1': 4, 'layer2': 8, 'layer3': 8, 'layer4': 8}
_MOBILENET_V3_OS16 = {'stem': 2, 'stage1': 2, 'stage2': 4, 'stage3_first': 8,
                      'stage3': 8, 'stage4': 16, 'stage5': 16}

# name -> (logits stride, {feature: stride}, stride of aux_logits or None when
# the model has no auxiliary head).
EXPECTED = {
    'fcn_resnet50': (8, {**_RESNET_OS8, 'head': 8}, 8),
    'fcn_resnet101': (8, {**_RESNET_OS8, 'head': 8}, 8),
    'deeplabv3_resnet50': (8, {**_RESNET_OS8, 'head': 8}, 8),
    'deeplabv3_resnet101': (8, {**_RESNET_OS8, 'head': 8}, 8),
    'deeplabv3_resnet18': (8, {**_RESNET_OS8, 'head': 8}, 8),
    'deeplabv3_resnet34': (8, {**_RESNET_OS8, 'head': 8}, 8),
    'deeplabv3_mobilenet_v3_large': (
        16, {**_MOBILENET_V3_OS16, 'head': 16}, 8),
    'lraspp_mobilenet_v3_large': (8, {**_MOBILENET_V3_OS16, 'head': 8}, None),
    'deeplabv3_mobilenet_v2': (
        8, {'stem': 2, 'stage1': 2, 'stage2': 4, 'stage3': 8, 'stage4': 8,
            'stage5': 8, 'head': 8}, 8),
    'deeplabv3plus_resnet50': (
        4, {'stem': 4, 'layer1': 4, 'layer2': 8, 'layer3': 16, 'layer4': 16,
            'head': 4}, 16),
    'segnet_vgg16': (
        1, {'stage1': 2, 'stage2': 4, 'stage3': 8, 'stage4': 16,
            'stage5': 32, 'head': 1}, None),
    'tiny_deeplabv3': (8, {**_RESNET_OS8, 'head': 8}, 8),
    'tiny_fcn': (8, {**_RESNET_OS8, 'head': 8}, 8),
    'tiny_lraspp': (8, {**_MOBILENET_V3_OS16, 'head': 8}, None),
}
TINY = ('tiny_deeplabv3', 'tiny_fcn', 'tiny_lraspp')


def rbg_key(seed=0):
  return jax.random.key(seed, impl='rbg')


def trace(model, shape, *, train=False, dtype=jnp.float32):
  """Shapes of `model.init_with_output`: ((logits, features), variables)."""
  images = jax.ShapeDtypeStruct(shape, dtype)
  rngs = {'params': rbg_key(0), 'dropout': rbg_key(1)}
  return jax.eval_shape(
      lambda x: model.init_with_output(rngs, x, train=train), images)


def numpy_variables(model, shape):
  """Random variables for `model` made with NumPy from traced shapes.

  Compiling the initialisers costs seconds on CPU; the forward tests only
  need plausible values: He-scaled kernels, zero biases, unit BN scales.
  """
  _, shapes = trace(model, shape)
  rng = np.random.default_rng(0)

  def make(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      fan_in = np.prod(leaf.shape[:-1])
      return rng.normal(size=leaf.shape) * np.sqrt(2 / fan_in)
    if name in ('scale', 'var'):
      return np.ones(leaf.shape)
    return np.zeros(leaf.shape)

  return jax.tree_util.tree_map_with_path(
      lambda p, l: jnp.asarray(make(p, l), l.dtype), shapes)


@functools.lru_cache(maxsize=None)
def tiny_model_and_variables(name):
  """A tiny model (with its auxiliary head when it has one) and variables."""
  aux = EXPECTED[name][2] is not None
  model = models.create(name, num_classes=5, **({'aux': True} if aux else {}))
  return model, numpy_variables(model, (1, 32, 32, 3))


def random_images(shape, seed=0):
  return jnp.asarray(
      np.random.default_rng(seed).normal(size=shape).astype(np.float32))


def check_outputs(name, logits, features, image_shape, *, aux):
  os, strides, aux_stride = EXPECTED[name]
  b, h, w, _ = image_shape
  assert logits.shape == (b, h // os, w // os, 5 if name in TINY else 21)
  assert logits.dtype == jnp.float32
  expected_keys = set(strides) | ({'aux_logits'} if aux else set())
  assert set(features) == expected_keys
  for key, stride in strides.items():
    assert features[key].shape[:3] == (b, h // stride, w // stride), key
  if aux:
    assert features['aux_logits'].shape == (
        b, h // aux_stride, w // aux_stride, logits.shape[-1])
    assert features['aux_logits'].dtype == jnp.float32


def test_registry_lists_all_models():
  assert set(models.available()) == set(EXPECTED)


@pytest.mark.parametrize('name', sorted(TORCHVISION_PARAMS))
def test_torchvision_parameter_counts_and_aux_outputs(name):
  aux = name != 'lraspp_mobilenet_v3_large'
  model = models.create(name, num_classes=21, **({'aux': aux} if aux else {}))
  shape = (2, 64, 96, 3)
  (logits, features), variables = trace(model, shape)
  assert models.count_params(variables) == TORCHVISION_PARAMS[name]
  assert models.count_params(variables['params']) == TORCHVISION_PARAMS[name]
  assert 'batch_stats' in variables
  assert set(variables['params']) == (
      {'backbone', 'classifier'} | ({'aux_classifier'} if aux else set()))
  check_outputs(name, logits, features, shape, aux=aux)


@pytest.mark.parametrize('name', sorted(set(EXPECTED) - set(TINY)))
def test_full_size_models_shapes_and_strides(name):
  model = models.create(name, num_classes=21)
  assert model.output_stride == EXPECTED[name][0]
  shape = (2, 64, 96, 3)
  (logits, features), _ = trace(model, shape)
  check_outputs(name, logits, features, shape, aux=False)


@pytest.mark.parametrize('name', ['deeplabv3_resnet18',
                                  'deeplabv3_mobilenet_v2',
                                  'deeplabv3plus_resnet50'])
def test_full_size_models_aux_head(name):
  (logits, features), _ = trace(
      models.create(name, num_classes=21, aux=True), (1, 64, 64, 3))
  check_outputs(name, logits, features, (1, 64, 64, 3), aux=True)


def test_real_init_of_a_tiny_model():
  model = models.create('tiny_fcn', num_classes=5)
  variables = jax.jit(lambda x: model.init(rbg_key(), x, train=False))(
      jnp.zeros((1, 32, 32, 3)))
  assert models.count_params(variables) == models.count_params(
      numpy_variables(model, (1, 32, 32, 3)))
  bn = variables['batch_stats']['backbone']['bn1']
  np.testing.assert_array_equal(bn['var'], np.ones(8))
  kernel = variables['params']['backbone']['conv1']['kernel']
  assert kernel.shape == (7, 7, 3, 8) and float(jnp.std(kernel)) > 0


@pytest.mark.parametrize('name', TINY)
def test_tiny_models_forward(name):
  aux = EXPECTED[name][2] is not None
  model, variables = tiny_model_and_variables(name)
  assert model.output_stride == EXPECTED[name][0]
  images = random_images((2, 32, 48, 3))
  logits, features = jax.jit(
      lambda v, x: model.apply(v, x, train=False))(variables, images)
  check_outputs(name, logits, features, images.shape, aux=aux)
  assert np.all(np.isfinite(logits))


@pytest.mark.parametrize('name', TINY)
def test_tiny_models_train_mode_updates_batch_stats(name):
  model, variables = tiny_model_and_variables(name)
  images = random_images((2, 32, 48, 3), seed=1)
  (logits, _), updates = jax.jit(lambda v, x: model.apply(
      v, x, train=True, mutable=['batch_stats'],
      rngs={'dropout': rbg_key(2)}))(variables, images)
  assert logits.shape[-1] == 5
  assert set(updates) == {'batch_stats'}
  old, new = variables['batch_stats'], updates['batch_stats']
  assert jax.tree.structure(old) == jax.tree.structure(new)
  changed = jax.tree.leaves(jax.tree.map(
      lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), old, new))
  assert all(changed)


def test_tiny_model_gradients_are_finite():
  model, variables = tiny_model_and_variables('tiny_fcn')
  images = random_images((1, 32, 32, 3), seed=2)

  def loss(params):
    (logits, _), _ = model.apply(
        {**variables, 'params': params}, images, train=True,
        mutable=['batch_stats'], rngs={'dropout': rbg_key(3)})
    return jnp.mean(logits**2)

  grads = jax.jit(jax.grad(loss))(variables['params'])
  norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
  assert all(np.isfinite(norms)) and sum(norms) > 0


@pytest.mark.parametrize('os', [8, 16, 32])
def test_output_stride_option(os):
  model = models.create('tiny_deeplabv3', num_classes=3, output_stride=os)
  assert model.output_stride == os
  (logits, features), _ = trace(model, (1, 64, 64, 3))
  assert logits.shape == (1, 64 // os, 64 // os, 3)
  assert features['layer4'].shape[1] == 64 // os
  assert features['layer3'].shape[1] == 64 // min(os, 16)


def test_bfloat16_forward():
  name = 'tiny_deeplabv3'
  model, variables = tiny_model_and_variables(name)
  bf16 = models.create(name, num_classes=5, aux=True, dtype='bfloat16')
  assert bf16.dtype == jnp.bfloat16
  images = random_images((2, 32, 48, 3), seed=3)
  apply = lambda m: jax.jit(lambda v, x: m.apply(v, x, train=False))
  ref, _ = apply(model)(variables, images)
  logits, features = apply(bf16)(variables, images)
  assert logits.dtype == jnp.float32
  assert features['aux_logits'].dtype == jnp.float32
  assert features['head'].dtype == jnp.bfloat16
  np.testing.assert_allclose(logits, ref, rtol=0.1,
                             atol=0.1 * float(jnp.abs(ref).max()))
  # Parameters stay float32 whatever the computation dtype.
  (_, _), shapes = trace(bf16, (1, 32, 32, 3))
  assert {x.dtype for x in jax.tree.leaves(shapes)} == {
      jnp.dtype(jnp.float32)}


@pytest.mark.parametrize('name', ['lraspp_mobilenet_v3_large',
                                  'deeplabv3plus_resnet50', 'segnet_vgg16'])
def test_bfloat16_full_size_models_trace(name):
  model = models.create(name, num_classes=21, dtype=jnp.bfloat16)
  (logits, features), _ = trace(model, (1, 64, 64, 3))
  assert logits.dtype == jnp.float32
  assert features['head'].dtype == jnp.bfloat16


# Registry errors --------------------------------------------------------------


def test_unknown_model_lists_valid_names():
  with pytest.raises(ValueError, match='valid names') as err:
    models.create('resnet9000', num_classes=21)
  for name in models.available():
    assert name in str(err.value)


@pytest.mark.parametrize('num_classes', [0, -3, 2.5, True, '21', None])
def test_bad_num_classes(num_classes):
  with pytest.raises(ValueError, match='num_classes'):
    models.create('tiny_fcn', num_classes=num_classes)


def test_numpy_int_num_classes_is_accepted():
  assert models.create('tiny_fcn', num_classes=np.int64(4)).num_classes == 4


def test_unknown_option():
  with pytest.raises(ValueError, match='does not accept.*colour'):
    models.create('tiny_fcn', num_classes=3, colour='red')
  # deeplabv3plus' logits stride is fixed; its backbone stride is an option.
  with pytest.raises(ValueError, match='output_stride'):
    models.create('deeplabv3plus_resnet50', num_classes=3, output_stride=8)


@pytest.mark.parametrize('name', ['lraspp_mobilenet_v3_large', 'segnet_vgg16',
                                  'tiny_lraspp'])
def test_models_without_aux_head_refuse_aux(name):
  models.create(name, num_classes=3, aux=False)
  with pytest.raises(ValueError, match='auxiliary'):
    models.create(name, num_classes=3, aux=True)


@pytest.mark.parametrize('name', ['tiny_fcn', 'tiny_deeplabv3',
                                  'fcn_resnet50',
                                  'deeplabv3_mobilenet_v3_large'])
def test_invalid_output_stride(name):
  with pytest.raises(ValueError, match='output_stride'):
    models.create(name, num_classes=3, output_stride=4)


@pytest.mark.parametrize('shape', [(32, 32, 3), (1, 3, 32, 32), (1, 32, 32, 1),
                                   (1, 1, 32, 32, 3)])
def test_wrong_image_layout(shape):
  model = models.create('tiny_fcn', num_classes=3)
  with pytest.raises(ValueError, match=r'\[B, H, W, 3\]'):
    trace(model, shape)


def test_segnet_needs_multiples_of_32():
  with pytest.raises(ValueError, match='divisible by 32'):
    trace(models.create('segnet_vgg16', num_classes=3), (1, 48, 64, 3))


def test_count_params():
  tree = {'params': {'a': jnp.zeros((2, 3)), 'b': {'c': jnp.zeros(4)}},
          'batch_stats': {'mean': jnp.zeros(100)}}
  assert models.count_params(tree) == 10
  assert models.count_params(tree['params']) == 10


# Layer semantics --------------------------------------------------------------


def record_modules(model, shape, module_type, attributes):
  """{module path: attribute values} of every `module_type` in `model`."""
  found = {}

  def interceptor(next_fun, args, kwargs, context):
    m = context.module
    if isinstance(m, module_type):
      found['/'.join(m.scope.path)] = tuple(getattr(m, a) for a in attributes)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    trace(model, shape)
  return found


def record_convs(model, shape):
  """{module path: (strides, dilation)} of every `layers.Conv` of `model`."""
  return record_modules(model, shape, layers.Conv, ('strides', 'dilation'))


def test_resnet_dilation_follows_torchvision_make_layer():
  convs = record_convs(models.create('deeplabv3_resnet50', num_classes=21),
                       (1, 64, 64, 3))
  bb = 'backbone/'
  assert convs[bb + 'conv1'] == (2, 1)
  assert convs[bb + 'layer2_0/conv2'] == (2, 1)
  assert convs[bb + 'layer2_0/downsample_conv'] == (2, 1)
  # layer3: stride replaced by dilation 2; its first block keeps dilation 1.
  assert convs[bb + 'layer3_0/conv2'] == (1, 1)
  assert convs[bb + 'layer3_0/downsample_conv'] == (1, 1)
  assert convs[bb + 'layer3_1/conv2'] == (1, 2)
  assert convs[bb + 'layer3_5/conv2'] == (1, 2)
  # layer4: dilation 4; its first block uses layer3's dilation 2.
  assert convs[bb + 'layer4_0/conv2'] == (1, 2)
  assert convs[bb + 'layer4_2/conv2'] == (1, 4)
  aspp = 'classifier/aspp/'
  assert [convs[aspp + f'convs_{i}/conv'][1] for i in range(1, 4)] == [
      12, 24, 36]


def test_resnet18_basic_blocks_are_dilated():
  convs = record_convs(models.create('deeplabv3_resnet18', num_classes=21),
                       (1, 64, 64, 3))
  assert convs['backbone/layer3_0/conv1'] == (1, 1)
  assert convs['backbone/layer3_1/conv2'] == (1, 2)
  assert convs['backbone/layer4_0/conv1'] == (1, 2)
  assert convs['backbone/layer4_1/conv1'] == (1, 4)


def test_mobilenet_v3_dilation_matches_torchvision_dilated():
  convs = record_convs(
      models.create('lraspp_mobilenet_v3_large', num_classes=21),
      (1, 64, 64, 3))
  dw = lambda i: convs[f'backbone/features_{i}/depthwise/conv']
  assert dw(7) == (2, 1)
  assert dw(12) == (1, 1)
  # In torchvision's dilated MobileNetV3 every block of the last stage,
  # including the first, is dilated.
  assert dw(13) == (1, 2)
  assert dw(15) == (1, 2)
  assert 'backbone/features_13/se/fc1' in convs
  assert 'backbone/features_12/se/fc1' in convs
  assert 'backbone/features_7/se/fc1' not in convs
  assert convs['backbone/features_16/conv'] == (1, 1)


def test_batch_norm_settings_follow_torchvision():
  norms = record_modules(
      models.create('deeplabv3_mobilenet_v3_large', num_classes=21, aux=True,
                    axis_name='data'),
      (1, 64, 64, 3), nn.BatchNorm, ('epsilon', 'momentum', 'axis_name'))
  for path, settings in norms.items():
    # MobileNetV3's own BatchNorm2d(eps=1e-3, momentum=0.01); heads default.
    if path.startswith('backbone/'):
      assert settings == (1e-3, 0.99, 'data'), path
    else:
      assert settings == (1e-5, 0.9, 'data'), path
  assert 'aux_classifier/block/bn' in norms


def test_mobilenet_v2_dilation_uses_resnet_convention():
  convs = record_convs(
      models.create('deeplabv3_mobilenet_v2', num_classes=21),
      (1, 64, 64, 3))
  dw = lambda i: convs[f'backbone/features_{i}/depthwise/conv']
  assert dw(4) == (2, 1)    # first 32-channel block: to stride 8
  assert dw(7) == (1, 1)    # first 64-channel block: stride -> dilation 2
  assert dw(8) == (1, 2)
  assert dw(13) == (1, 2)
  assert dw(14) == (1, 2)   # first 160-channel block: stride -> dilation 4
  assert dw(17) == (1, 4)
  assert 'backbone/features_1/expand/conv' not in convs  # expand ratio 1


def numpy_conv(x, kernel, stride, pad, dilation, groups=1):
  """PyTorch Conv2d semantics (zero padding, cross-correlation), NHWC/HWIO."""
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  kh, kw, cin_g, cout = kernel.shape
  b, h, w, _ = x.shape
  oh = (h - dilation * (kh - 1) - 1) // stride + 1
  ow = (w - dilation * (kw - 1) - 1) // stride + 1
  out = np.zeros((b, oh, ow, cout))
  cout_g = cout // groups
  for o in range(cout):
    g = o // cout_g
    for i in range(oh):
      for j in range(ow):
        patch = x[:, i * stride:i * stride + dilation * (kh - 1) + 1:dilation,
                  j * stride:j * stride + dilation * (kw - 1) + 1:dilation,
                  g * cin_g:(g + 1) * cin_g]
        out[:, i, j, o] = np.sum(patch * kernel[..., o], axis=(1, 2, 3))
  return out


@pytest.mark.parametrize('kernel_size,stride,dilation,groups', [
    (3, 2, 1, 1), (7, 2, 1, 1), (3, 1, 2, 1), (5, 2, 1, 4), (1, 2, 1, 1)])
def test_conv_uses_pytorch_padding(kernel_size, stride, dilation, groups):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, 9, 10, 4)).astype(np.float32)
  conv = layers.Conv(8, kernel_size, strides=stride, dilation=dilation,
                     groups=groups, use_bias=True)
  params = conv.init(rbg_key(), x)['params']
  assert params['kernel'].shape == (kernel_size, kernel_size, 4 // groups, 8)
  params = {'kernel': rng.normal(size=params['kernel'].shape),
            'bias': rng.normal(size=8)}
  got = conv.apply({'params': params}, x)
  want = numpy_conv(x, params['kernel'], stride,
                    dilation * (kernel_size - 1) // 2, dilation, groups)
  np.testing.assert_allclose(got, want + params['bias'], rtol=1e-4, atol=1e-4)


def torch_bilinear_reference(x, out_h, out_w):
  """Direct transcription of PyTorch's upsample_bilinear2d (align_corners=False)
  for one [H, W] plane, pixel by pixel."""
  in_h, in_w = x.shape

  def source(dst, in_size, out_size):
    src = (dst + 0.5) * (in_size / out_size) - 0.5
    src = max(src, 0.0)
    i0 = int(src)
    i1 = i0 + 1 if i0 < in_size - 1 else i0
    lam = src - i0
    return i0, i1, 1.0 - lam, lam

  out = np.zeros((out_h, out_w))
  for i in range(out_h):
    h0, h1, a0, a1 = source(i, in_h, out_h)
    for j in range(out_w):
      w0, w1, b0, b1 = source(j, in_w, out_w)
      out[i, j] = (a0 * (b0 * x[h0, w0] + b1 * x[h0, w1]) +
                   a1 * (b0 * x[h1, w0] + b1 * x[h1, w1]))
  return out


def test_resize_bilinear_hand_computed():
  up = layers.resize_bilinear(jnp.array([0.0, 1.0]).reshape(1, 1, 2, 1),
                              (1, 4))
  np.testing.assert_allclose(up[0, 0, :, 0], [0.0, 0.25, 0.75, 1.0])
  x = jnp.array([1.0, 2.0, 4.0, 8.0, 16.0]).reshape(1, 5, 1, 1)
  # 5 -> 2: sources at 0.75 and 3.25, no low-pass filter.
  down = layers.resize_bilinear(x, (2, 1))
  np.testing.assert_allclose(down[0, :, 0, 0],
                             [0.25 * 1 + 0.75 * 2, 0.75 * 8 + 0.25 * 16])
  # 4 -> 2 averages pairs; 1x1 -> broadcast.
  down = layers.resize_bilinear(x[:, :4], (2, 1))
  np.testing.assert_allclose(down[0, :, 0, 0], [1.5, 6.0])
  one = layers.resize_bilinear(jnp.full((1, 1, 1, 2), 3.0), (3, 5))
  np.testing.assert_allclose(one, np.full((1, 3, 5, 2), 3.0))


@pytest.mark.parametrize('in_hw,out_hw', [
    ((4, 5), (8, 10)), ((3, 7), (11, 9)), ((16, 12), (5, 7)),
    ((9, 9), (4, 13)), ((6, 6), (6, 6)),
    # Integer factors (the slice formulation): up x8 / x3, down x4 / x3.
    ((4, 5), (32, 15)), ((1, 2), (3, 16)), ((16, 12), (4, 4)),
    ((12, 9), (6, 3))])
def test_resize_bilinear_matches_pytorch_reference(in_hw, out_hw):
  x = np.random.default_rng(0).normal(size=(2, *in_hw, 3)).astype(np.float32)
  got = np.asarray(layers.resize_bilinear(jnp.asarray(x), out_hw))
  assert got.shape == (2, *out_hw, 3)
  for b in range(2):
    for c in range(3):
      np.testing.assert_allclose(
          got[b, ..., c], torch_bilinear_reference(x[b, ..., c], *out_hw),
          rtol=1e-5, atol=1e-5)


def _bilinear_matrix(in_hw, out_hw):
  """The resize as a [out_h * out_w, in_h * in_w] matrix, column by column
  from the pixel-by-pixel reference."""
  cols = []
  for j in range(in_hw[0] * in_hw[1]):
    e = np.zeros(in_hw[0] * in_hw[1])
    e[j] = 1.0
    cols.append(torch_bilinear_reference(e.reshape(in_hw), *out_hw).ravel())
  return np.stack(cols, axis=1)


@pytest.mark.parametrize('in_hw,out_hw', [
    ((4, 5), (32, 15)), ((8, 6), (4, 2)), ((3, 7), (11, 9)), ((9, 6), (3, 4))])
def test_resize_bilinear_gradient_is_the_transpose(in_hw, out_hw):
  # The resize is linear, so its input gradient for a cotangent g is M^T g
  # with M built from the reference.
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, *in_hw, 3)).astype(np.float32)
  g = rng.normal(size=(2, *out_hw, 3)).astype(np.float32)
  _, vjp = jax.vjp(lambda x: layers.resize_bilinear(x, out_hw), jnp.asarray(x))
  (got,) = vjp(jnp.asarray(g))
  m = _bilinear_matrix(in_hw, out_hw)
  for b in range(2):
    for c in range(3):
      want = (m.T @ g[b, ..., c].ravel()).reshape(in_hw)
      np.testing.assert_allclose(got[b, ..., c], want, rtol=1e-5, atol=1e-5)


def test_resize_bilinear_keeps_dtype():
  x = jnp.ones((1, 3, 3, 2), jnp.bfloat16)
  assert layers.resize_bilinear(x, (5, 5)).dtype == jnp.bfloat16
  assert layers.resize_bilinear(x, (6, 1)).dtype == jnp.bfloat16


def test_max_pool_and_unpool_hand_computed():
  plane = np.array([[1, 5, 0, 2],
                    [3, 4, 7, 7],
                    [9, 0, 1, 1],
                    [0, 0, 1, 6]], np.float32)
  x = jnp.asarray(plane).reshape(1, 4, 4, 1)
  pooled, indices = pooling.max_pool_2x2_with_indices(x)
  np.testing.assert_array_equal(pooled[0, ..., 0], [[5, 7], [9, 6]])
  # Position inside each window, row-major; the tie (7, 7) takes the first.
  np.testing.assert_array_equal(indices[0, ..., 0], [[1, 2], [0, 3]])
  unpooled = pooling.max_unpool_2x2(pooled * 10, indices)
  np.testing.assert_array_equal(unpooled[0, ..., 0], [[0, 50, 0, 0],
                                                       [0, 0, 70, 0],
                                                       [90, 0, 0, 0],
                                                       [0, 0, 0, 60]])


def test_unpool_inverts_pool_on_random_maps():
  x = random_images((2, 8, 6, 5), seed=4)
  pooled, indices = pooling.max_pool_2x2_with_indices(x)
  restored = pooling.max_unpool_2x2(pooled, indices)
  is_max = np.asarray(restored) != 0
  # Exactly one non-zero per window, equal to the input there.
  np.testing.assert_array_equal(
      is_max.reshape(2, 4, 2, 3, 2, 5).sum(axis=(2, 4)), 1)
  np.testing.assert_array_equal(np.asarray(restored)[is_max],
                                np.asarray(x)[is_max])
  # Gradients flow back to the maxima only.
  grad = jax.grad(lambda v: pooling.max_unpool_2x2(
      *pooling.max_pool_2x2_with_indices(v)).sum())(x)
  np.testing.assert_array_equal(np.asarray(grad), is_max.astype(np.float32))
