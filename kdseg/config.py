"""The configuration schema shared by every config file, and its validation.

Config files in `configs/` start from `defaults()` and override fields, so that
every field a run reads exists with a documented default. `validate` checks a
config before anything heavy starts and raises a ValueError naming the key,
the problem and the valid choices.
"""

import os
from typing import Any, Mapping

import ml_collections

from kdseg import fields

MODES = ('train', 'distill', 'evaluate', 'compare', 'predict', 'benchmark',
         'export', 'cache_teacher')
BENCHMARK_MODELS = ('teacher', 'student')
EXPORT_PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')
EXPORT_TFLITE = ('float32', 'int8')  # kdseg.litert.FORMATS
QUANTIZE = ('', 'int8')  # kdseg.ops.fake_quant.MODES
OPTIMIZERS = ('sgd', 'adamw')
PARALLEL_BACKENDS = ('shard_map', 'pmap')

# Sub-configs whose contents are free-form (model options, dataset keyword
# arguments, schedule specs): their keys are checked by their consumer.
_FREE_FORM = ('model.options', 'teacher.options', 'data.kwargs',
              'train.learning_rate', 'loss.temperature', 'loss.terms',
              'extra_teachers', 'compare.variants')


def defaults() -> ml_collections.ConfigDict:
  """Returns the full schema with its default values."""
  c = ml_collections.ConfigDict()
  # One of MODES. 'train': supervised training of `model` (a teacher or a
  # baseline student). 'distill': `model` is the student, `teacher` is frozen
  # and restored from `teacher.checkpoint`. 'evaluate': evaluate the
  # checkpoint in the workdir. 'compare': train the teacher, a baseline
  # student and a distilled student in sub-workdirs and tabulate all three.
  # 'predict', 'benchmark', 'export': picture, time or export the student in
  # the workdir (sections `predict`, `benchmark`, `export` below).
  c.mode = 'train'
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = 'synthetic'  # A name from kdseg.data.available().
  c.data.kwargs = ml_collections.ConfigDict()  # Passed to the data source.
  c.data.train_split = 'train'
  c.data.eval_split = 'val'
  c.data.crop_size = (64, 64)  # (H, W) of training crops.
  c.data.scale_range = (0.5, 2.0)
  c.data.hflip = True
  c.data.photometric = False
  c.data.eval_pad_to = ml_collections.config_dict.placeholder(tuple)
  # Resize every example (train and eval) by this factor when decoding, e.g.
  # 0.5 to work at half the files' resolution; metrics are then computed at
  # that resolution.
  c.data.image_scale = 1.0
  # Optional (h, w): resize every example to this size when decoding, after
  # `image_scale`; for data sets whose image sizes vary (Oxford-IIIT Pet).
  c.data.image_size = ml_collections.config_dict.placeholder(tuple)
  # Decode (and resize) every example once before training instead of once
  # an epoch (kdseg.data.decoded): in memory up to `memory_budget_mb`,
  # otherwise in flat files under `decode_dir` (default: a temporary folder,
  # removed at exit).
  c.data.decode_once = True
  c.data.memory_budget_mb = 2048
  c.data.decode_dir = ''

  c.model = ml_collections.ConfigDict()
  c.model.name = 'tiny_fcn'  # A name from kdseg.models.available().
  c.model.options = ml_collections.ConfigDict()  # e.g. aux, output_stride.
  c.model.dtype = 'float32'  # Computation dtype; parameters stay float32.
  # A checkpoint whose tensors initialise the fresh model where path and shape
  # match: a converted backbone (`python -m kdseg.convert`) or a workdir.
  c.model.init_from = ''
  # Quantization-aware training (kdseg.ops.fake_quant): 'int8' trains the
  # student's convolutions on int8-rounded weights and inputs, so that the
  # int8 LiteRT export keeps its accuracy; '' trains in float. A stage's
  # `quantize` overrides it (e.g. float first, then a quantized fine-tune).
  c.model.quantize = ''

  c.teacher = ml_collections.ConfigDict()
  c.teacher.name = 'tiny_deeplabv3'
  c.teacher.options = ml_collections.ConfigDict()
  c.teacher.checkpoint = ''  # A workdir (or its checkpoints/ folder).
  # Teacher forward dtype; 'bfloat16' keeps the softmax in float32.
  c.teacher.dtype = 'float32'
  # This teacher's share of the combined target when `extra_teachers` add
  # more (kdseg.teachers); weights are normalised to sum to 1.
  c.teacher.weight = 1.0
  # Compute the teacher's logits once per training image and warp them to
  # every augmented crop instead of running the teacher each step
  # (kdseg.teacher_cache); in `cache_dir`, default <data dir>/teacher_cache.
  c.teacher.cache = False
  c.teacher.cache_dir = ''
  # More frozen teachers, label -> {name, options, checkpoint, dtype, weight}
  # (the fields of `teacher`); each restored from its own checkpoint.
  c.extra_teachers = ml_collections.ConfigDict()

  c.loss = ml_collections.ConfigDict()
  c.loss.ce_weight = 1.0
  c.loss.kd_weight = 1.0
  c.loss.kd_type = 'kl'  # 'kl' (pixel KD with temperature) or 'mse'.
  # Pixels the `kd` term teaches: 'labelled' (all) or 'teacher_correct' (those
  # where the teacher's argmax is the label; its mistakes left to the CE).
  c.loss.kd_pixels = 'labelled'
  # A schedule spec (kdseg.schedules); `{'name': 'constant', 'value': T}`
  # for a fixed temperature (`--config.loss.temperature.value=4`).
  c.loss.temperature = ml_collections.ConfigDict(
      {'name': 'constant', 'value': 1.0})
  c.loss.aux_weight = 0.4  # Weight of the auxiliary head's cross-entropy.
  c.loss.label_smoothing = 0.0
  c.loss.class_weights = ml_collections.config_dict.placeholder(tuple)
  # More distillation terms, label -> {loss, weight, temperature, student,
  # teacher, source, options, connector}; see kdseg.terms. They add to the
  # classic `kd` term above (set kd_weight = 0 to use terms alone).
  c.loss.terms = ml_collections.ConfigDict()
  # Training phases at step boundaries: a tuple of {'steps': N, 'loss':
  # {overrides of `loss`}}; see kdseg.stages. Empty: one phase, `loss`.
  c.stages = ()

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000
  c.train.batch_size = 16  # Global batch, split across all devices.
  c.train.optimizer = 'sgd'
  c.train.momentum = 0.9
  c.train.weight_decay = 1e-4
  c.train.learning_rate = ml_collections.ConfigDict(
      {'name': 'poly', 'init_value': 0.01, 'power': 0.9})
  c.train.grad_clip_norm = 0.0  # 0 disables clipping.
  c.train.sync_batch_stats = True  # Batch norm over the global batch.
  c.train.log_every = 50
  c.train.eval_every = 500  # Evaluates and saves a checkpoint.
  # Checkpoints between evaluations, every N steps and/or every M minutes
  # (0: off), so that a crash loses little; they carry no mIoU.
  c.train.checkpoint_every = 0
  c.train.checkpoint_minutes = 0.0
  c.train.keep_checkpoints = 2  # The latest K are kept, plus the best.
  # Before each evaluation, recompute batch-norm statistics over this many
  # training batches with the weights frozen (kdseg.precise_bn); 0: keep the
  # running averages.
  c.train.precise_bn_batches = 0
  c.train.progress_bar = True

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 16

  # Mode 'predict': PNG panels image | truth | teacher | student of the
  # workdir's student (teacher column when `teacher.checkpoint` is set).
  c.predict = ml_collections.ConfigDict()
  c.predict.split = ''  # A split of `data`; '' is `data.eval_split`.
  # A folder of image files to segment instead of a split (no ground truth).
  c.predict.folder = ''
  c.predict.num_images = 8  # The first N images of the split or folder.
  # Whole-pixel zoom of the panels; 0 picks the smallest one that makes
  # them at least 128 pixels high.
  c.predict.scale = 0

  # Mode 'benchmark': parameters, FLOPs, memory, latency and throughput of
  # the inference function (uint8 images to class maps) on this device.
  c.benchmark = ml_collections.ConfigDict()
  c.benchmark.models = ('teacher', 'student')  # Of BENCHMARK_MODELS.
  c.benchmark.resolution = (512, 512)  # (H, W) of the input images.
  c.benchmark.batch_size = 8
  c.benchmark.warmup = 3  # Untimed calls after compilation.
  c.benchmark.steps = 20  # Timed calls.
  # The student converted to LiteRT at `resolution` (EXPORT_TFLITE formats;
  # () for none) and timed one image per call in the LiteRT interpreter,
  # beside the JAX student at batch 1. int8 is calibrated on random images:
  # its cost, not its accuracy (that is `export`'s check).
  c.benchmark.litert = ()

  # Mode 'export': the workdir's student as a TensorFlow SavedModel, uint8
  # images [N, H, W, 3] in, int32 class maps [N, H, W] out.
  c.export = ml_collections.ConfigDict()
  c.export.dir = ''  # '' is <workdir>/export.
  # (H, W) of the serving signature; unset: `data.crop_size`.
  c.export.resolution = ml_collections.config_dict.placeholder(tuple)
  # Platforms the serialized computation is lowered for (EXPORT_PLATFORMS);
  # the SavedModel runs only there. The check below needs 'cpu'.
  c.export.platforms = ('cpu',)
  # Images of `data.eval_split` on which the SavedModel and JAX must agree.
  c.export.num_check_images = 4
  # LiteRT (TFLite) models of the student for one image, written to the
  # export folder as student_<format>.tflite (EXPORT_TFLITE; () writes none)
  # and checked on the same images: 'float32', and 'int8' quantized to full
  # integer, calibrated on the first `calibration_images` images of
  # `data.train_split`.
  c.export.tflite = ('float32', 'int8')
  c.export.calibration_images = 200

  # Mode 'compare' (kdseg.compare): the teacher once, then the baseline
  # student and each distilled variant once per seed (seeds config.seed,
  # config.seed + 1, ...), with the paired gain of each variant over the
  # baseline and its t-interval.
  c.compare = ml_collections.ConfigDict()
  c.compare.seeds = 1
  # label -> nested overrides of this config for one distilled student, e.g.
  # {'kd_t1': {'loss': {'temperature': {'name': 'constant', 'value': 1.0}}}}.
  # Empty: one variant, 'distill', with this config's own loss.
  c.compare.variants = ml_collections.ConfigDict()
  # Labels of the variants to run this time, e.g. ('kd', 'cwd'); empty: all.
  # The teacher and the baselines always run (finished runs are evaluated,
  # not trained again), so a long table can be filled a few methods at a
  # time in one workdir.
  c.compare.only = ()
  # A trained teacher's workdir to distil from instead of training one; it
  # is evaluated, never trained further.
  c.compare.teacher_workdir = ''
  # Training steps of the teacher when compare trains it; 0: train.steps.
  c.compare.teacher_steps = 0
  c.compare.confidence = 0.95

  c.parallel = ml_collections.ConfigDict()
  c.parallel.backend = 'shard_map'  # Or 'pmap' (in maintenance mode).
  c.parallel.distributed = False  # Call jax.distributed.initialize().
  # Multi-process runs off a managed cluster (e.g. two machines, or two
  # processes on one): the coordinator's host:port, the number of processes
  # and this one's index; empty/0/-1 let JAX detect them (TPU pods, SLURM).
  c.parallel.coordinator_address = ''
  c.parallel.num_processes = 0
  c.parallel.process_id = -1
  # A process that stops answering for this long ends the others' runs.
  c.parallel.heartbeat_timeout_s = 100
  return c


def _paths(config: Any, prefix: str = '') -> dict[str, Any]:
  out = {}
  items = config.items() if hasattr(config, 'items') else []
  for key, value in items:
    path = f'{prefix}{key}'
    out[path] = value
    if isinstance(value, (ml_collections.ConfigDict, Mapping)) and (
        path not in _FREE_FORM):
      out.update(_paths(value, path + '.'))
  return out



def _validate_tools(config: ml_collections.ConfigDict, *,
                    check_files: bool) -> None:
  """Checks the `predict`, `benchmark` and `export` sections."""
  for key in ('predict.num_images', 'benchmark.batch_size',
              'benchmark.steps', 'export.num_check_images',
              'export.calibration_images'):
    section, field = key.split('.')
    if int(config[section][field]) <= 0:
      fields.fail(key, f'must be a positive integer; got {config[section][field]}.')
  for key in ('predict.scale', 'benchmark.warmup'):
    section, field = key.split('.')
    if int(config[section][field]) < 0:
      fields.fail(key, f'must be >= 0; got {config[section][field]}.')
  from kdseg import data as data_lib
  split = config.predict.split
  if (split and config.data.name in data_lib.list_sources() and
      split not in data_lib.list_splits(config.data.name)):
    fields.fail('predict.split', f'unknown split {split!r} of {config.data.name!r};'
          f' valid: {data_lib.list_splits(config.data.name)}.')
  if check_files and config.predict.folder and not os.path.isdir(
      config.predict.folder):
    fields.fail('predict.folder', f'{config.predict.folder!r} is not a folder; give '
          'a folder of image files, or leave it empty to read a split.')
  models = tuple(config.benchmark.models)
  bad = [m for m in models if m not in BENCHMARK_MODELS]
  if bad or not models:
    fields.fail('benchmark.models', f'{models!r}; valid: a non-empty tuple of '
          f'{list(BENCHMARK_MODELS)}.')
  for key in ('benchmark.resolution', 'export.resolution'):
    section, field = key.split('.')
    size = config[section][field]
    if size is not None and (len(size) != 2 or min(size) <= 0):
      fields.fail(key, f'must be (H, W) with positive sizes; got {size!r}.')
  platforms = tuple(config.export.platforms)
  bad = [p for p in platforms if p not in EXPORT_PLATFORMS]
  if bad or not platforms:
    fields.fail('export.platforms', f'{platforms!r}; valid: a non-empty tuple of '
          f'{list(EXPORT_PLATFORMS)}.')
  for key in ('export.tflite', 'benchmark.litert'):
    section, name = key.split('.')
    formats = tuple(config[section][name])
    if any(f not in EXPORT_TFLITE for f in formats):
      fields.fail(key, f'{formats!r}; valid: a tuple of '
                  f'{list(EXPORT_TFLITE)} (empty: no LiteRT model).')


def validate(config: ml_collections.ConfigDict, *, num_devices: int = 1,
             check_files: bool = True) -> None:
  """Checks a config; raises ValueError naming the key and the fix.

  Args:
    config: a config built from `defaults()`.
    num_devices: the global device count the batch is split across.
    check_files: check that referenced checkpoints exist.
  """
  from kdseg import data as data_lib
  from kdseg import models
  from kdseg import schedules

  schema = _paths(defaults())
  given = _paths(config)
  unknown = sorted(k for k in given if k not in schema and not any(
      k.startswith(f + '.') for f in _FREE_FORM))
  if unknown:
    parent = unknown[0].rpartition('.')[0]
    siblings = sorted(k.rpartition('.')[2] for k in schema
                      if k.rpartition('.')[0] == parent)
    fields.fail(unknown[0], f'unknown key. Valid keys here: {siblings}.')

  if config.mode not in MODES:
    fields.fail('mode', f'unknown mode {config.mode!r}; valid: {list(MODES)}.')
  _validate_tools(config, check_files=check_files)
  if config.data.name not in data_lib.list_sources():
    fields.fail('data.name', f'unknown dataset {config.data.name!r}; valid: '
          f'{data_lib.list_sources()}.')
  for key in ('model', 'teacher'):
    name = config[key].name
    if name not in models.available():
      fields.fail(f'{key}.name', f'unknown model {name!r}; valid: '
            f'{models.available()}.')
  if config.model.quantize not in QUANTIZE:
    fields.fail('model.quantize', f'{config.model.quantize!r}; valid: '
                f'{list(QUANTIZE)}.')
  for key in ('model.dtype', 'teacher.dtype'):
    section, field = key.split('.')
    if config[section][field] not in models.COMPUTE_DTYPES:
      fields.fail(key, f'{config[section][field]!r}; valid: '
            f'{list(models.COMPUTE_DTYPES)}.')
  size = config.data.image_size
  if size is not None and (len(size) != 2 or min(size) <= 0):
    fields.fail('data.image_size', f'must be None or two positive integers (h, w); '
          f'got {size}.')
  if not float(config.data.memory_budget_mb) >= 0:
    fields.fail('data.memory_budget_mb', f'must be >= 0 (0 keeps decoded examples '
          f'on disk); got {config.data.memory_budget_mb}.')
  if not float(config.data.image_scale) > 0:
    fields.fail('data.image_scale', f'must be positive; got '
          f'{config.data.image_scale}.')
  if config.teacher.cache and config.extra_teachers:
    fields.fail('teacher.cache', 'cached logits are the primary teacher\'s only; '
          'with extra_teachers set teacher.cache = False.')
  if int(config.compare.seeds) < 1:
    fields.fail('compare.seeds', f'must be a positive number of seeds; got '
          f'{config.compare.seeds}.')
  if int(config.compare.teacher_steps) < 0:
    fields.fail('compare.teacher_steps', f'must be >= 0 (0: train.steps); got '
          f'{config.compare.teacher_steps}.')
  if not 0 < float(config.compare.confidence) < 1:
    fields.fail('compare.confidence', f'must be in (0, 1); got '
          f'{config.compare.confidence}.')
  if config.train.optimizer not in OPTIMIZERS:
    fields.fail('train.optimizer', f'unknown optimizer {config.train.optimizer!r}; '
          f'valid: {list(OPTIMIZERS)}.')
  if config.parallel.backend not in PARALLEL_BACKENDS:
    fields.fail('parallel.backend', f'{config.parallel.backend!r}; valid: '
          f'{list(PARALLEL_BACKENDS)}.')
  if config.loss.kd_type not in ('kl', 'mse'):
    fields.fail('loss.kd_type', f"{config.loss.kd_type!r}; valid: ['kl', 'mse'].")
  for key in ('train.checkpoint_every', 'train.checkpoint_minutes',
              'train.precise_bn_batches'):
    section, field = key.split('.')
    if float(config[section][field]) < 0:
      fields.fail(key, f'must be >= 0 (0: off); got {config[section][field]}.')
  for key in ('train.steps', 'train.batch_size', 'eval.batch_size',
              'train.log_every', 'train.eval_every', 'train.keep_checkpoints'):
    section, field = key.split('.')
    if int(config[section][field]) <= 0:
      fields.fail(key, f'must be a positive integer; got {config[section][field]}.')
  for key, batch in (('train.batch_size', config.train.batch_size),
                     ('eval.batch_size', config.eval.batch_size)):
    if batch % num_devices:
      fields.fail(key, f'the global batch {batch} is not divisible by the '
            f'{num_devices} devices; use a multiple of {num_devices}.')
  try:
    schedules.create(config.train.learning_rate,
                     total_steps=config.train.steps,
                     name='config.train.learning_rate')
    schedules.create(config.loss.temperature, total_steps=config.train.steps,
                     positive=True, name='config.loss.temperature')
  except ValueError as e:
    raise ValueError(str(e)) from None

  if check_files and config.model.init_from and not os.path.exists(
      config.model.init_from):
    fields.fail('model.init_from', f'{config.model.init_from!r} does not exist; '
          'give a `python -m kdseg.convert` output folder or a workdir.')
  if config.mode in ('distill', 'cache_teacher'):
    if check_files and not config.teacher.checkpoint:
      fields.fail('teacher.checkpoint', f"mode {config.mode!r} needs the teacher's "
            'checkpoint: the workdir of its training run.')
    if check_files and not os.path.exists(config.teacher.checkpoint):
      fields.fail('teacher.checkpoint', f'{config.teacher.checkpoint!r} does not '
            'exist; train the teacher first (mode=train) and give its workdir.')

  # Terms, stages and extra teachers: names checked against the registries
  # and the models' feature names.
  from kdseg import stages as stages_lib
  stages_lib.validate(config, check_files=check_files)
