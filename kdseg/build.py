"""What every mode builds from a config: models, data sources, restored
students and teachers, and a finished run's facts from its checkpoint.

The trainer and the tools (evaluate, predict, benchmark, export, compare)
build through here, so that each thing is made one way.
"""

import os
from typing import Any, Optional

import ml_collections

from kdseg import checkpoint
from kdseg import data as data_lib
from kdseg import fields
from kdseg import models
from kdseg import teacher_cache as teacher_cache_lib
from kdseg import teachers as teachers_lib
from kdseg import train_state as state_lib


def options(spec: Any) -> dict[str, Any]:
  """A ConfigDict or mapping (model options, kwargs) as a plain dict."""
  return dict(fields.plain(spec) or {})


def create_model(config: ml_collections.ConfigDict, section: str,
                 num_classes: int, *, axis_name: Optional[str] = None):
  """Builds `config.model` or `config.teacher` for `num_classes` classes."""
  spec = config[section]
  kwargs = options(spec.options)
  if axis_name is not None:
    kwargs['axis_name'] = axis_name
  return models.create(spec.name, num_classes=num_classes,
                       dtype=models.COMPUTE_DTYPES[spec.dtype], **kwargs)


def image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """The training crop's shape: what models are initialised and restored at."""
  return (*config.data.crop_size, 3)


def split_kwargs(kwargs: dict[str, Any], split: str) -> dict[str, Any]:
  """The data source's kwargs for `split`.

  `num_<split>_examples` sets that split's num_examples. An empty string
  counts as not given: configs declare keys such as `manual_dir` with '' so
  that the command line can fill them in (`--config.data.kwargs.manual_dir`).
  """
  out = {k: v for k, v in kwargs.items()
         if not (k.startswith('num_') and k.endswith('_examples'))
         and not (isinstance(v, str) and not v)}
  key = f'num_{split}_examples'
  if key in kwargs:
    out['num_examples'] = kwargs[key]
  return out


def _source(config: ml_collections.ConfigDict, split: str):
  kwargs = config.data.kwargs.to_dict()
  source = data_lib.get_source(config.data.name, split,
                               **split_kwargs(kwargs, split))
  source = data_lib.rescale(source, float(config.data.image_scale))
  if config.data.image_size is not None:
    source = data_lib.resize(source, config.data.image_size)
  return source


def get_sources(config: ml_collections.ConfigDict):
  """The (train, eval) data sources of `config.data`."""
  return (_source(config, config.data.train_split),
          _source(config, config.data.eval_split))


def split_source(config: ml_collections.ConfigDict, split: str = ''):
  """Split `split` of `config.data` (its eval split when empty), with every
  data option applied as in training."""
  return _source(config, split or config.data.eval_split)


def decode_once(config: ml_collections.ConfigDict, source):
  """`source` decoded once (config.data.decode_once), else as it is."""
  if not config.data.decode_once:
    return source
  return data_lib.decode_once(
      source, memory_budget_bytes=int(config.data.memory_budget_mb * 2**20),
      cache_dir=config.data.decode_dir or None,
      progress_bar=config.train.progress_bar)


def restore(module, path: str, shape: tuple[int, int, int]):
  """(variables, meta) of `module` from the best checkpoint of the run in
  `path`, checked against the module's own shapes at input `shape`."""
  abstract = state_lib.abstract_variables(module, shape)
  return checkpoint.restore_model_variables(path, abstract)


def restore_student(config: ml_collections.ConfigDict, workdir: str,
                    num_classes: int):
  """The student (`config.model`) and its variables from a run's workdir.

  Only the checkpoint's 'model' item is read, with the student's own
  shapes: nothing that trains beside the student (a teacher, distillation
  connectors) can come along.

  Returns:
    (model, {'params', 'batch_stats'}, checkpoint meta).
  """
  model = create_model(config, 'model', num_classes)
  variables, meta = restore(model, workdir, image_shape(config))
  return model, variables, meta


def load_teachers(config: ml_collections.ConfigDict, num_classes: int
                  ) -> tuple[teachers_lib.TeacherSet, dict[str, Any],
                             dict[str, dict]]:
  """Restores every teacher (`teacher`, `extra_teachers`) from its own
  checkpoint.

  Returns:
    (TeacherSet, label -> {'params', 'batch_stats'}, label -> meta), the
    primary teacher under `kdseg.teachers.PRIMARY`.
  """
  teachers, variables, metas = {}, {}, {}
  for label, spec in teachers_lib.specs(config).items():
    module = teachers_lib.create_module(spec, num_classes)
    variables[label], metas[label] = restore(module, spec['checkpoint'],
                                             image_shape(config))
    teachers[label] = teachers_lib.Teacher(
        module, models.COMPUTE_DTYPES[spec['dtype']], float(spec['weight']))
  return teachers_lib.TeacherSet.create(teachers), variables, metas


def load_teacher(config: ml_collections.ConfigDict, num_classes: int):
  """The primary teacher alone: (module, variables, meta)."""
  module = create_model(config, 'teacher', num_classes)
  variables, meta = restore(module, config.teacher.checkpoint,
                            image_shape(config))
  return module, variables, meta


def classes(config: ml_collections.ConfigDict, *workdirs: str
            ) -> tuple[int, list[str]]:
  """(class count, class names) from the metadata of the first of
  `workdirs` that holds a checkpoint (no data set needed), else from
  `config.data`'s eval split. Checkpoints of older runs have the count but
  not the names: the names then come from the data set."""
  count = None
  for workdir in workdirs:
    if workdir and os.path.isdir(workdir):
      meta = checkpoint.read_meta(workdir)
      if 'class_names' in meta:
        return len(meta['class_names']), list(meta['class_names'])
      if count is None and 'num_classes' in meta:
        count = int(meta['num_classes'])
  source = split_source(config)
  if count is not None and count != source.num_classes:
    raise ValueError(
        f'The checkpoint in {workdirs[0]} has {count} classes but '
        f'{config.data.name!r} has {source.num_classes}: give the config the '
        'run was trained with.')
  return source.num_classes, list(source.class_names)


def teacher_cache(config: ml_collections.ConfigDict, teachers, variables,
                  metas, stage_terms, train_source):
  """(lookup, logits size, folder) of the primary teacher's logits over
  `train_source`, cached (`config.teacher.cache`, `kdseg.teacher_cache`).

  Refuses terms that compare teacher features: only logits are cached.
  """
  for term in (t for ts in stage_terms for t in ts):
    if term.teacher != 'logits':
      raise ValueError(
          f"config.teacher.cache: term {term.label!r} compares the teacher's "
          f'{term.teacher!r} features, and only logits are cached; set '
          "teacher.cache = False or give the term teacher='logits'.")
  if train_source.lookup is None:
    raise ValueError('config.teacher.cache needs random access to the '
                     'training split: set data.decode_once = True.')
  primary = teachers_lib.PRIMARY
  spec = teachers_lib.specs(config)[primary]
  identity = {'name': spec['name'], 'options': dict(spec['options']),
              'checkpoint': os.path.abspath(spec['checkpoint']),
              'step': metas[primary].get('step'), 'dtype': spec['dtype']}
  return teacher_cache_lib.prepare(
      train_source, teacher_spec=identity,
      teacher_module=teachers[primary].module,
      teacher_variables=variables[primary],
      teacher_dtype=teachers[primary].dtype, crop_size=config.data.crop_size,
      cache_dir=config.teacher.cache_dir,
      progress_bar=config.train.progress_bar)
