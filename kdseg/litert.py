"""The student as LiteRT (TFLite) flatbuffers, float32 and full-integer int8.

Both formats compute what `kdseg.inference.segment` computes, for one image:

  images: uint8 [1, H, W, 3] -> classes: int32 [1, H, W]

normalisation, the model in eval mode, logits resized bilinearly to (H, W)
and the argmax all inside. The path is jax2tf with native serialization
(StableHLO in an XlaCallModule) into a SavedModel, then
`tf.lite.TFLiteConverter.from_saved_model`, which legalizes the StableHLO to
TFLite builtins. Two things about kdseg's students stop that converter, and
this module works around both:

- *Batch-polymorphic shapes.* The SavedModel of `kdseg.export` takes any
  batch size; with a symbolic batch dimension the argmax's `mhlo.reduce` is
  left illegal ("failed to legalize operation 'mhlo.reduce' that was
  explicitly marked illegal"). LiteRT runs one image at a time, so the
  function converted here has the batch fixed to 1.
- *Max pools padded with -inf* (the ResNet stem's 3x3/2 pool, as in
  PyTorch). Float32 converts, but int8 quantization gives the -inf padding
  constant, and so the pool and everything after it, a scale of about 1e36:
  LiteRT's XNNPACK delegate refuses the model ("failed to create XNNPACK
  runtime") and its reference kernels abort. Before conversion, every such
  pool (at any depth of calls, not inside control flow) is rewritten to pad
  by repeating the edge pixels instead, which gives the same maxima whenever
  each window holds at least one real pixel (padding smaller than the
  window, as in every pool of the zoo), so no -inf is left. An int8 model
  with such a scale all the same is refused with a ValueError.

A student that computes in bfloat16 (`model.dtype`) is converted computing
in float32, which LiteRT has kernels for; the checks of `kdseg.export`
measure what that changes.

The function is traced with XLA's own convolutions (`kdseg.ops.conv`'s
'xla' implementation) whatever the configured one: the converter turns them
into CONV_2D and DEPTHWISE_CONV_2D and folds the batch norms after them into
their weights. kdseg's CPU formulation of a depthwise convolution (shifted
products and sums, fast in XLA:CPU) would convert too, but as dozens of
separate MUL/ADD ops with the batch norm unfolded, each rounded to int8 on
its own: a trained CamVid student's int8 mIoU fell from 48.7 to 34.2 that
way, and is 46.6 with whole convolutions (RESULTS.md).

In the int8 model (full-integer post-training quantization, calibrated on
given uint8 images) only the first operation stays float: the cast of the
uint8 input to float32, followed by a QUANTIZE to int8. Normalisation,
convolutions (per-channel weights, batch norms folded in), activations, the
bilinear resize and the argmax (int8 in, int32 class map out) all run in
int8, with int32 biases.

`run` executes a .tflite file with the `ai-edge-litert` package's interpreter
when it is installed (`pip install .[litert]`), else with TensorFlow's
deprecated `tf.lite.Interpreter`.
"""

import collections
import contextlib
import importlib
import importlib.metadata
import tempfile
from typing import Any, Callable, Iterator, Optional, Sequence
import warnings

import flax.linen as nn
import jax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np

from kdseg.data import tf_setup
from kdseg import inference
from kdseg.ops import conv

FORMATS = ('float32', 'int8')
INPUT_NAME = 'images'  # The names of the SavedModel's signature.
OUTPUT_NAME = 'classes'
# A quantization scale above this comes from an infinite constant.
_MAX_SCALE = 1e30


# --------------------------------------------------------- the JAX function


def _edge_padded_max_pool(x: jax.Array, *, padding, window_dimensions,
                          base_dilation, window_dilation,
                          **params: Any) -> jax.Array:
  """`reduce_window_max` with its padding taken from the edges, not -inf."""
  plain = all(d == 1 for d in tuple(base_dilation) + tuple(window_dilation))
  fits = all(0 <= lo < k and 0 <= hi < k
             for (lo, hi), k in zip(padding, window_dimensions))
  if plain and fits and any(lo or hi for lo, hi in padding):
    # Each window holds at least one real pixel, and every repeated edge
    # pixel it covers is one of them: the maxima do not change.
    x = jnp.pad(x, padding, mode='edge')
    padding = ((0, 0),) * x.ndim
  return jax.lax.reduce_window_max_p.bind(
      x, padding=tuple(padding), window_dimensions=window_dimensions,
      base_dilation=base_dilation, window_dilation=window_dilation, **params)


# Call-like primitives whose callee is inlined, so that pools inside them are
# rewritten too. Their derivative rules do not matter: nothing here is
# differentiated.
_CALLS = ('jit', 'pjit', 'checkpoint', 'remat2', 'custom_jvp_call',
          'custom_vjp_call')


def _callee(eqn: jex.core.JaxprEqn) -> Optional[tuple[Any, Sequence[Any]]]:
  """(jaxpr, consts) that a call-like equation runs, else None."""
  if eqn.primitive.name not in _CALLS:
    return None
  callee = eqn.params.get('jaxpr', eqn.params.get('call_jaxpr'))
  if isinstance(callee, jex.core.ClosedJaxpr):
    return callee.jaxpr, callee.consts
  if isinstance(callee, jex.core.Jaxpr):
    return callee, ()
  return None


def _eval_without_inf_pools(jaxpr: jex.core.Jaxpr, consts: Sequence[Any],
                            *args: Any) -> list[Any]:
  """Evaluates `jaxpr` with padded max pools taken from the edges.

  Calls (`_CALLS`) are inlined; every other equation, control flow
  included, is bound as it is.
  """
  env = {}
  read = lambda v: v.val if isinstance(v, jex.core.Literal) else env[v]
  env.update(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    callee = _callee(eqn)
    if eqn.primitive.name == 'reduce_window_max':
      outs = [_edge_padded_max_pool(*invals, **eqn.params)]
    elif callee is not None:
      outs = _eval_without_inf_pools(*callee, *invals)
    else:
      # jax 0.10 returns the parameters; older releases (subfuns, params).
      bind = eqn.primitive.get_bind_params(eqn.params)
      subfuns, params = bind if isinstance(bind, tuple) else ((), bind)
      outs = eqn.primitive.bind(*subfuns, *invals, **params)
      outs = outs if eqn.primitive.multiple_results else [outs]
    env.update(zip(eqn.outvars, outs))
  return [read(v) for v in jaxpr.outvars]


def _in_float32(model: nn.Module) -> nn.Module:
  """`model` computing in float32: LiteRT has no bfloat16 convolutions
  ("failed to legalize operation 'tfl.transpose'"); the weights are float32
  whatever the compute dtype."""
  if getattr(model, 'dtype', jnp.float32) == jnp.float32:
    return model
  return model.clone(dtype=jnp.float32)


def segment_function(model: nn.Module, variables: Any,
                     size: Sequence[int]) -> Callable[[Any, Any], jax.Array]:
  """`(variables, images) -> inference.segment(model, variables, images)`
  for uint8 images [1, H, W, 3], with no -inf padding (see the module doc)."""
  shape = (1, int(size[0]), int(size[1]), 3)
  # XLA's own convolutions, not kdseg's CPU formulation: the converter makes
  # a DEPTHWISE_CONV_2D of a grouped convolution and folds the batch norm
  # after it into its weights, where the CPU formulation's shifted products
  # and sums stay separate ops, each rounded to int8 on its own.
  with conv.implementation('xla'):
    closed = jax.make_jaxpr(lambda v, x: inference.segment(model, v, x))(
        variables, jax.ShapeDtypeStruct(shape, jnp.uint8))

  def segment(v, images):
    args = jax.tree.leaves(v) + [images]
    return _eval_without_inf_pools(closed.jaxpr, closed.consts, *args)[0]
  return segment


# ------------------------------------------------------------- conversion


def _save_batch_one(model: nn.Module, variables: Any, size: Sequence[int],
                    directory: str) -> None:
  """A SavedModel of `segment_function` for one uint8 image [1, H, W, 3]."""
  tf = tf_setup.import_tensorflow()
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  height, width = (int(s) for s in size)
  variables = jax.device_get(variables)
  weights = tf.nest.map_structure(
      lambda x: tf.Variable(np.asarray(x), trainable=False), variables)
  # No polymorphic shapes: the converter cannot legalize the argmax over a
  # symbolic batch dimension.
  converted = jax2tf.convert(
      segment_function(model, variables, size),
      native_serialization_platforms=('cpu',), with_gradient=False)

  @tf.function(autograph=False, input_signature=[
      tf.TensorSpec([1, height, width, 3], tf.uint8, name=INPUT_NAME)])
  def serve(images):
    return {OUTPUT_NAME: converted(weights, images)}

  module = tf.Module()
  module.weights = weights  # Saved as variables, frozen by the converter.
  module.serve = serve
  tf.saved_model.save(module, directory, signatures={'serving_default': serve})


def _check_images(images: np.ndarray, size: Sequence[int], what: str) -> None:
  shape = (int(size[0]), int(size[1]), 3)
  if (images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != shape
      or not len(images)):
    raise ValueError(f'{what} must be uint8 [N >= 1, {shape[0]}, {shape[1]}, '
                     f'3]; got {images.dtype} {tuple(images.shape)}.')


def _check_scales(flatbuffer: bytes) -> None:
  """Raises ValueError if an infinite constant reached the quantization."""
  for tensor in _interpreter(flatbuffer).get_tensor_details():
    scales = tensor['quantization_parameters']['scales']
    if len(scales) and not np.all(np.isfinite(scales) &
                                  (np.abs(scales) < _MAX_SCALE)):
      raise ValueError(
          f'int8 conversion: tensor {tensor["name"]!r} has quantization scale '
          f'{float(np.max(np.abs(scales))):.3g}: an infinite constant (e.g. '
          'the -inf padding of a max pool inside control flow, which the '
          'rewrite does not enter) reached the quantizer.')


def convert(model: nn.Module, variables: Any, *, size: Sequence[int],
            fmt: str = 'float32',
            calibration_images: Optional[np.ndarray] = None) -> bytes:
  """The student as a LiteRT flatbuffer.

  Args:
    model: the segmentation model.
    variables: its {'params', 'batch_stats'}.
    size: (H, W) of the input image.
    fmt: 'float32', or 'int8' for full-integer post-training quantization.
    calibration_images: for 'int8', uint8 [N, H, W, 3] whose activation
      ranges set the quantization (e.g. a few hundred training images).

  Returns:
    The .tflite model: uint8 [1, H, W, 3] in, int32 [1, H, W] out.
  """
  if fmt not in FORMATS:
    raise ValueError(f'Unknown LiteRT format {fmt!r}; valid: {list(FORMATS)}.')
  if fmt == 'int8':
    if calibration_images is None:
      raise ValueError("fmt='int8' needs calibration_images.")
    _check_images(np.asarray(calibration_images), size, 'calibration_images')
  tf = tf_setup.import_tensorflow()
  with tempfile.TemporaryDirectory() as directory:
    _save_batch_one(_in_float32(model), variables, size, directory)
    converter = tf.lite.TFLiteConverter.from_saved_model(directory)
    if fmt == 'int8':
      _quantize_fully(converter, calibration_images)
    with _quiet_deprecation():  # Calibration runs tf.lite.Interpreter.
      flatbuffer = converter.convert()
  if fmt == 'int8':
    _check_scales(flatbuffer)
  return flatbuffer


def _quantize_fully(converter: Any, images: np.ndarray) -> None:
  """Sets `converter` to full-integer int8, calibrated on `images`."""
  tf = tf_setup.import_tensorflow()

  def representative() -> Iterator[dict[str, np.ndarray]]:
    for image in np.asarray(images):
      yield {INPUT_NAME: image[None]}
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  converter.representative_dataset = representative
  # Builtins in int8 only: an op that cannot be quantized fails the
  # conversion instead of silently staying float.
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]


# ---------------------------------------------------------------- running


@contextlib.contextmanager
def _quiet_deprecation() -> Iterator[None]:
  """Hides tf.lite.Interpreter's deprecation notice (the module doc says
  how to get LiteRT's interpreter instead)."""
  with warnings.catch_warnings():
    warnings.filterwarnings(
        'ignore', message=r'(?s).*tf\.lite\.Interpreter is deprecated',
        category=UserWarning)
    yield


def _litert_interpreter() -> Optional[type]:
  """LiteRT's Interpreter class, or None when ai-edge-litert is missing."""
  try:
    return importlib.import_module('ai_edge_litert.interpreter').Interpreter
  except ImportError:
    return None


def interpreter_name() -> str:
  """Which interpreter `run` uses, with its version."""
  if _litert_interpreter() is None:
    version = tf_setup.import_tensorflow().__version__
    return f'tf.lite.Interpreter (TensorFlow {version})'
  try:
    version = importlib.metadata.version('ai-edge-litert')
  except importlib.metadata.PackageNotFoundError:  # Importable, not installed.
    version = 'of unknown version'
  return f'ai_edge_litert {version}'


def _interpreter(model: str | bytes,
                 num_threads: Optional[int] = None) -> Any:
  """An interpreter of a .tflite path or flatbuffer (not yet allocated)."""
  source = ({'model_content': model} if isinstance(model, bytes)
            else {'model_path': model})
  if num_threads is not None:
    source['num_threads'] = num_threads
  litert_class = _litert_interpreter()
  if litert_class is not None:
    return litert_class(**source)
  tf = tf_setup.import_tensorflow()
  with _quiet_deprecation():
    return tf.lite.Interpreter(**source)


def classifier(model: str | bytes, *, num_threads: Optional[int] = None
               ) -> tuple[Callable[[np.ndarray], np.ndarray], tuple[int, int]]:
  """(classify, (H, W)) of a .tflite model (a path or a flatbuffer):
  `classify(image)` sets one uint8 image [H, W, 3], invokes the interpreter
  and returns its int32 class map [H, W]."""
  interpreter = _interpreter(model, num_threads)
  interpreter.allocate_tensors()
  (source,), (target,) = (interpreter.get_input_details(),
                          interpreter.get_output_details())

  def classify(image: np.ndarray) -> np.ndarray:
    interpreter.set_tensor(source['index'], image[None])
    interpreter.invoke()
    return interpreter.get_tensor(target['index'])[0].copy()
  return classify, tuple(int(s) for s in source['shape'][1:3])


def run(model: str | bytes, images: np.ndarray) -> np.ndarray:
  """Class maps (int32 [N, H, W]) of uint8 `images` [N, H, W, 3] under a
  .tflite model (a path or a flatbuffer), one image per call."""
  classify, size = classifier(model)
  images = np.asarray(images)
  _check_images(images, size, 'images')
  return np.stack([classify(image) for image in images])


def op_counts(model: str | bytes) -> collections.Counter:
  """How many operations of each kind (e.g. 'DEPTHWISE_CONV_2D') a .tflite
  model has, before any delegate takes them over."""
  interpreter = _interpreter(model)
  # pylint: disable-next=protected-access
  return collections.Counter(op['op_name'] for op in
                             interpreter._get_ops_details())


def float_tensors(model: str | bytes) -> list[str]:
  """Names of a .tflite model's float32 tensors (in the int8 model: the
  cast of the uint8 input only)."""
  return [t['name'] for t in _interpreter(model).get_tensor_details()
          if t['dtype'] == np.float32]
