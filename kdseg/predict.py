"""Mode 'predict': pictures of what the student (and its teacher) predict.

For the first `predict.num_images` images of a split of `config.data`
(`predict.split`, by default the eval split) or of a folder of image files
(`predict.folder`, without ground truth), writes one PNG per image under
`<workdir>/predictions/`: image | ground truth | teacher | student in the
data set's class colours, over a legend, plus `predictions.json` listing the
files, the columns and the palette. The student is restored from the
workdir; the teacher column appears when `teacher.checkpoint` is set.
Images are segmented at their own size, as evaluation does.
"""

import json
import os
import re
from typing import Any, Iterator, Optional

import jax
import ml_collections
import numpy as np

from kdseg import build
from kdseg.data import tf_setup
from kdseg import inference
from kdseg import progress
from kdseg import visualize

OUTPUT_DIR = 'predictions'
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.gif')

# (name, uint8 image [H, W, 3], int label [H, W] or None).
Example = tuple[str, np.ndarray, Optional[np.ndarray]]


def split_examples(source, num_images: int) -> Iterator[Example]:
  """The first `num_images` examples of a source, named `<split>_<index>`.

  Characters that are unsafe in file names (a sliced split such as
  `train[80%:]`) become '_'.
  """
  prefix = re.sub(r'[^A-Za-z0-9_.-]+', '_', source.split).strip('_')
  examples = source.as_dataset().take(num_images).as_numpy_iterator()
  for i, example in enumerate(examples):
    yield f'{prefix}_{i:04d}', example['image'], example['label']


def folder_files(folder: str, num_images: int) -> list[str]:
  """The first `num_images` image files of `folder`, by name."""
  names = sorted(name for name in os.listdir(folder)
                 if name.lower().endswith(IMAGE_SUFFIXES) and
                 not name.startswith('.'))
  if not names:
    raise ValueError(f'config.predict.folder: no image files '
                     f'({", ".join(IMAGE_SUFFIXES)}) in {folder!r}.')
  return [os.path.join(folder, name) for name in names[:num_images]]


def folder_examples(paths: list[str]) -> Iterator[Example]:
  """Decoded RGB images of `paths`, named by their file stems."""
  tf = tf_setup.import_tensorflow()
  for path in paths:
    image = tf.io.decode_image(tf.io.read_file(path), channels=3,
                               expand_animations=False)
    yield os.path.splitext(os.path.basename(path))[0], image.numpy(), None


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Writes the prediction panels; returns what `predictions.json` holds."""
  # The classes from the checkpoint: a folder of images needs no data set.
  num_classes, class_names = build.classes(config, workdir)
  model, variables, meta = build.restore_student(config, workdir, num_classes)
  teacher = teacher_variables = None
  if config.teacher.checkpoint:
    teacher, teacher_variables, _ = build.load_teacher(config, num_classes)
  colours = visualize.palette(config.data.name, num_classes)
  if config.predict.folder:
    paths = folder_files(config.predict.folder, config.predict.num_images)
    examples, total = folder_examples(paths), len(paths)
  else:
    source = build.split_source(config, config.predict.split)
    examples = split_examples(source, config.predict.num_images)
    total = min(config.predict.num_images, source.num_examples)

  out_dir = os.path.join(workdir, OUTPUT_DIR)
  writes = jax.process_index() == 0
  if writes:
    os.makedirs(out_dir, exist_ok=True)
  bar = progress.bar(total=total, desc='predict',
                     enabled=config.train.progress_bar)
  files = []
  for name, image, label in examples:
    student = np.asarray(inference.jit_segment(model, variables,
                                               image[None]))[0]
    teacher_classes = None
    if teacher is not None:
      teacher_classes = np.asarray(inference.jit_segment(
          teacher, teacher_variables, image[None]))[0]
    picture = visualize.prediction_panel(
        image, colours=colours, class_names=class_names, truth=label,
        teacher=teacher_classes, student=student,
        scale=config.predict.scale or visualize.auto_scale(image.shape[0]))
    files.append(f'{name}.png')
    if writes:
      visualize.write_png(os.path.join(out_dir, files[-1]), picture)
    bar.update(1)
  bar.close()

  columns = ['image']
  columns += [] if config.predict.folder else ['ground truth']
  columns += [] if teacher is None else ['teacher']
  columns += ['student']
  summary = {
      'directory': out_dir, 'files': files, 'columns': columns,
      'source': config.predict.folder or f'{config.data.name}/{source.split}',
      'class_names': class_names, 'palette': colours.tolist(),
      'ignore_colour': list(visualize.IGNORE_COLOUR),
      'student': {'model': config.model.name, 'step': meta.get('step')},
      'teacher': ({'model': config.teacher.name,
                   'checkpoint': config.teacher.checkpoint}
                  if teacher is not None else None),
  }
  if writes:
    with open(os.path.join(out_dir, 'predictions.json'), 'w') as f:
      json.dump(summary, f, indent=1)
  progress.write(f'Wrote {len(files)} panels ({" | ".join(columns)}) to '
                 f'{out_dir}')
  return summary
