"""The modes around the trainer, end to end on a tiny run.

One tiny student is trained once for the module, and a tiny teacher
checkpoint is written from initialised weights; evaluate, predict, benchmark
and export then run on them, and their numbers and pictures are checked
against independent NumPy computations.
"""

import functools
import json
import os
import re

import jax
import numpy as np
import pytest
from PIL import Image
from PIL import ImageFont

from conftest import make_tiny_config
from kdseg import build
from kdseg import checkpoint
from kdseg import config as config_lib
from kdseg.data import synthetic
from kdseg.data import tf_setup
from kdseg import inference
from kdseg import main
from kdseg import optim
from kdseg import train
from kdseg import train_state
from kdseg import visualize

tf = tf_setup.import_tensorflow()

NUM_CLASSES = 4
NUM_VAL = 8
SIZE = 32
# ImageNet statistics in pixel units.
MEAN = np.array([0.485 * 255, 0.456 * 255, 0.406 * 255], np.float32)
STD = np.array([0.229 * 255, 0.224 * 255, 0.225 * 255], np.float32)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """Workdirs of a trained tiny student and of an initialised tiny teacher."""
  root = tmp_path_factory.mktemp('tools')
  student_dir, teacher_dir = str(root / 'student'), str(root / 'teacher')
  train.train(make_tiny_config(**{'train.steps': 2}), student_dir)
  # A teacher only needs weights to be restored: initialised ones save a
  # second training run.
  config = make_tiny_config(**{'model.name': 'tiny_deeplabv3'})
  model = build.create_model(config, 'model', NUM_CLASSES)
  tx = optim.create_optimizer(config, optim.create_learning_rate_fn(config))
  state = train_state.create_train_state(model, tx, jax.random.PRNGKey(7),
                                         (SIZE, SIZE, 3))
  manager = checkpoint.create_manager(teacher_dir, async_save=False)
  checkpoint.save(manager, state, meta={'model': 'tiny_deeplabv3'}, miou=0.5)
  manager.close()
  return student_dir, teacher_dir


def _config(**overrides):
  return make_tiny_config(**overrides)


def _val_data():
  """The tiny config's validation images and labels, straight from NumPy."""
  seed = synthetic.split_seed(0, 'val')
  return synthetic.make_scenes(NUM_VAL, height=SIZE, width=SIZE,
                               num_classes=NUM_CLASSES, seed=seed)


def _restore(workdir, name):
  model = build.create_model(_config(**{'model.name': name}), 'model',
                             NUM_CLASSES)
  abstract = train_state.abstract_variables(model, (SIZE, SIZE, 3))
  variables, _ = checkpoint.restore_model_variables(workdir, abstract)
  return model, variables


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, variables, x):
  logits, _ = model.apply(variables, x, train=False)
  logits = jax.image.resize(logits, (*x.shape[:3], logits.shape[-1]),
                            'bilinear', antialias=False)
  return jax.numpy.argmax(logits, axis=-1)


def _classes(model, variables, images_uint8, batch_size=None):
  """Independent prediction: NumPy normalisation, forward, resize, argmax.

  In chunks of `batch_size` (default: all), the batches the tool under test
  uses, so that both run the same compiled shapes.
  """
  x = (images_uint8.astype(np.float32) - MEAN) / STD
  batch_size = batch_size or len(x)
  return np.concatenate([np.asarray(_forward(model, variables,
                                             x[i:i + batch_size]))
                         for i in range(0, len(x), batch_size)])


# evaluate ------------------------------------------------------------------


def test_evaluate_table_json_and_picture(runs, capsys):
  student_dir, _ = runs
  result = main.run(_config(mode='evaluate'), student_dir)
  table = capsys.readouterr().out

  # Independent metrics from a NumPy confusion matrix of the same model.
  images, labels = _val_data()
  model, variables = _restore(student_dir, 'tiny_fcn')
  pred = _classes(model, variables, images, batch_size=4)  # eval.batch_size
  cm = np.bincount(labels.astype(np.int64).ravel() * NUM_CLASSES + pred.ravel(),
                   minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES)
  tp = np.diag(cm).astype(np.float64)
  union = cm.sum(0) + cm.sum(1) - tp
  iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
  miou, accuracy = np.nanmean(iou), tp.sum() / cm.sum()
  np.testing.assert_array_equal(np.array(result['confusion_matrix']), cm)

  printed = dict(re.findall(r'^(\S.*?)\s+(n/a|[\d.]+%)$', table, re.M))
  for i, name in enumerate(synthetic.CLASS_NAMES[:NUM_CLASSES]):
    want = 'n/a' if np.isnan(iou[i]) else f'{100 * iou[i]:.2f}%'
    assert printed[f'{i} {name}'] == want
  assert printed['mIoU'] == f'{100 * miou:.2f}%'
  assert printed['pixel accuracy'] == f'{100 * accuracy:.2f}%'

  with open(os.path.join(student_dir, 'eval.json')) as f:
    written = json.load(f)
  assert written['miou'] == pytest.approx(miou, abs=1e-12)
  assert written['pixel_accuracy'] == pytest.approx(accuracy, abs=1e-12)
  np.testing.assert_allclose(written['per_class_iou'], iou, atol=1e-12)
  assert list(written['per_class']) == list(synthetic.CLASS_NAMES[:4])

  # The picture: one cell per class pair, shaded by its row fraction.
  picture = tf.io.decode_png(tf.io.read_file(
      written['confusion_matrix_png'])).numpy()
  names = written['class_names']
  layout = visualize.confusion_layout(names)
  assert picture.shape == (layout.height, layout.width, 3)
  rows = cm / cm.sum(1, keepdims=True)
  for i in range(NUM_CLASSES):
    for j in range(NUM_CLASSES):
      y, x = layout.top + i * layout.pitch, layout.left + j * layout.pitch
      if cm[i].sum():
        np.testing.assert_array_equal(picture[y + 1, x + 1],
                                      visualize.ramp(rows[i, j]))


# predict -------------------------------------------------------------------


def _column(picture, layout, i, scale):
  """Column i of a panel, zoomed back down to the image size."""
  left = layout.lefts[i]
  cell = picture[layout.top:layout.top + layout.cell_height,
                 left:left + layout.cell_width]
  return cell[::scale, ::scale]


def test_predict_panels_show_palette_of_predictions(runs):
  student_dir, teacher_dir = runs
  config = _config(**{'mode': 'predict', 'predict.num_images': 3,
                      'teacher.checkpoint': teacher_dir})
  summary = main.run(config, student_dir)
  assert summary['columns'] == ['image', 'ground truth', 'teacher', 'student']
  assert summary['files'] == [f'val_{i:04d}.png' for i in range(3)]

  images, labels = _val_data()
  student, s_vars = _restore(student_dir, 'tiny_fcn')
  teacher, t_vars = _restore(teacher_dir, 'tiny_deeplabv3')
  colours = visualize.palette('synthetic', NUM_CLASSES)
  np.testing.assert_array_equal(summary['palette'], colours)
  scale = visualize.auto_scale(SIZE)
  layout = visualize.panel_layout(
      SIZE, SIZE, 4, scale=scale,
      legend_names=list(synthetic.CLASS_NAMES[:NUM_CLASSES]) + ['ignore'])
  for i, name in enumerate(summary['files']):
    picture = tf.io.decode_png(tf.io.read_file(
        os.path.join(student_dir, 'predictions', name))).numpy()
    assert picture.shape == (layout.height, layout.width, 3)
    np.testing.assert_array_equal(_column(picture, layout, 0, scale),
                                  images[i])
    np.testing.assert_array_equal(_column(picture, layout, 1, scale),
                                  colours[labels[i]])
    np.testing.assert_array_equal(
        _column(picture, layout, 2, scale),
        colours[_classes(teacher, t_vars, images[i:i + 1])[0]])
    np.testing.assert_array_equal(
        _column(picture, layout, 3, scale),
        colours[_classes(student, s_vars, images[i:i + 1])[0]])


def test_predict_folder_has_no_ground_truth(runs, tmp_path, monkeypatch):
  student_dir, _ = runs
  # Classes come from the checkpoint: the data set is never opened.
  monkeypatch.setattr(build, 'split_source',
                      lambda *a, **k: pytest.fail('opened the data set'))
  assert build.classes(_config(), student_dir) == (
      NUM_CLASSES, list(synthetic.CLASS_NAMES[:NUM_CLASSES]))
  images, _ = _val_data()
  folder = tmp_path / 'images'
  folder.mkdir()
  for i in range(2):
    visualize.write_png(str(folder / f'img{i}.png'), images[i])
  (folder / 'notes.txt').write_text('not an image')
  config = _config(**{'mode': 'predict', 'predict.folder': str(folder),
                      'predict.scale': 2})
  summary = main.run(config, student_dir)
  assert summary['columns'] == ['image', 'student']
  assert summary['files'] == ['img0.png', 'img1.png']
  student, s_vars = _restore(student_dir, 'tiny_fcn')
  colours = visualize.palette('synthetic', NUM_CLASSES)
  layout = visualize.panel_layout(
      SIZE, SIZE, 2, scale=2,
      legend_names=synthetic.CLASS_NAMES[:NUM_CLASSES])
  picture = tf.io.decode_png(tf.io.read_file(
      os.path.join(student_dir, 'predictions', 'img1.png'))).numpy()
  assert picture.shape == (layout.height, layout.width, 3)
  np.testing.assert_array_equal(
      _column(picture, layout, 1, 2),
      colours[_classes(student, s_vars, images[1:2])[0]])


# benchmark -----------------------------------------------------------------


def test_benchmark_counts_and_times(runs, capsys):
  student_dir, _ = runs
  config = _config(**{'mode': 'benchmark', 'benchmark.resolution': (32, 32),
                      'benchmark.batch_size': 2, 'benchmark.warmup': 1,
                      'benchmark.steps': 2})
  result = main.run(config, student_dir)
  out = capsys.readouterr().out
  with open(os.path.join(student_dir, 'benchmark.json')) as f:
    summary = json.load(f)
  assert summary == result
  rows = summary['models']
  assert list(rows) == ['teacher', 'student']
  # Independent parameter counts: the sizes of freshly initialised weights.
  for label, name in (('teacher', 'tiny_deeplabv3'), ('student', 'tiny_fcn')):
    model = build.create_model(_config(**{'model.name': name}), 'model',
                               NUM_CLASSES)
    params = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3)),
                           train=False))['params']
    assert rows[label]['params'] == sum(
        int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    assert f"{rows[label]['params']:,d}" in out
    assert rows[label]['flops_per_image'] > 0
    assert rows[label]['compiled_memory_bytes'] > 0
    assert rows[label]['latency_ms_mean'] > 0
    assert rows[label]['images_per_s'] == pytest.approx(
        2e3 / rows[label]['latency_ms_mean'])
  # The teacher is deeper and wider: more parameters and FLOPs.
  assert rows['teacher']['flops_per_image'] > rows['student']['flops_per_image']
  # The student comes from the workdir; without a teacher checkpoint the
  # teacher runs with random weights, and the output says so.
  assert rows['student']['weights'] == f'{student_dir} (step 2)'
  assert rows['teacher']['weights'] == 'random (no checkpoint)'
  assert 'Random weights where no checkpoint was given' in out
  assert summary['device'].startswith('cpu')
  assert rows['student']['device_peak_bytes'] is None  # CPU: no statistics.


# export --------------------------------------------------------------------


def test_export_matches_jax_student(runs, tmp_path):
  student_dir, _ = runs
  export_dir = str(tmp_path / 'saved_model')
  config = _config(**{'mode': 'export', 'export.dir': export_dir,
                      'export.num_check_images': 2})
  result = main.run(config, student_dir)
  assert result['agreement'] == 1.0

  images, _ = _val_data()
  images = images[:5]  # Another batch size than the check's.
  student, s_vars = _restore(student_dir, 'tiny_fcn')
  loaded = tf.saved_model.load(export_dir)
  out = loaded.signatures['serving_default'](images=tf.constant(images))
  classes = out['classes'].numpy()
  assert classes.dtype == np.int32 and classes.shape == (5, SIZE, SIZE)
  np.testing.assert_array_equal(classes, _classes(student, s_vars, images))
  # Only the student's weights are in the SavedModel.
  exported = sum(
      int(np.prod(shape)) for name, shape in tf.train.list_variables(
          os.path.join(export_dir, 'variables', 'variables'))
      if name.endswith('VARIABLE_VALUE'))
  stored = sum(int(np.size(x)) for x in jax.tree.leaves(s_vars))
  assert exported == stored


# visualize, config ---------------------------------------------------------


def test_write_png_roundtrip_and_palettes(tmp_path):
  rng = np.random.default_rng(0)
  for i, shape in enumerate(((5, 7, 3), (4, 3), (2, 6, 4), (3, 5, 1))):
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    path = str(tmp_path / f'{i}.png')
    assert visualize.write_png(path, image) == path
    with Image.open(path) as decoded:
      assert decoded.format == 'PNG'
      np.testing.assert_array_equal(
          np.asarray(decoded).reshape(image.shape), image)
  assert sorted(os.listdir(tmp_path)) == [f'{i}.png' for i in range(4)]
  for image, match in ((np.zeros((2, 2, 3)), 'must be uint8'),
                       (np.zeros((2, 2, 2), np.uint8), r'got \(2, 2, 2\)'),
                       (np.zeros((0, 2, 3), np.uint8), 'Empty image')):
    with pytest.raises(ValueError, match=match):
      visualize.write_png(str(tmp_path / 'bad.png'), image)
  assert not os.path.exists(tmp_path / 'bad.png')
  np.testing.assert_array_equal(visualize.palette('camvid', 11)[3],
                                (128, 64, 128))  # Road.
  colours = visualize.palette('synthetic', 20)
  assert len({tuple(c) for c in colours.tolist()}) == 20
  assert not np.any(np.all(colours == 0, axis=1))  # Never the ignore colour.
  np.testing.assert_array_equal(
      visualize.colorize(np.array([[0, 255], [1, -1]]), colours[:2]),
      [[colours[0], (0, 0, 0)], [colours[1], (0, 0, 0)]])


def test_text_sizes_and_bitmap_font_fallback(monkeypatch):
  for scale in (1, 2):
    mask = visualize.text_mask('Ab', scale)
    assert mask.shape == visualize.text_size('Ab', scale)
    assert mask.min() >= 0 and 0.5 < mask.max() <= 1
  assert visualize.text_size('Ab', 2)[0] > visualize.text_size('Ab', 1)[0]
  assert visualize.text_size('', 1) == (visualize.text_size('Ab')[0], 0)
  # Without a default font of any size (no FreeType, or Pillow before
  # 10.1), the one default font is zoomed by whole pixels.
  load_default = ImageFont.load_default

  def unsized(size=None):
    if size is not None:
      raise ImportError('The _imagingft C module is not installed')
    return load_default()

  monkeypatch.setattr(ImageFont, 'load_default', unsized)
  visualize._font.cache_clear()  # pylint: disable=protected-access
  try:
    np.testing.assert_array_equal(visualize.text_mask('Ab', 2),
                                  visualize.zoom(visualize.text_mask('Ab'), 2))
  finally:
    visualize._font.cache_clear()  # pylint: disable=protected-access


def test_batch_panels_for_tensorboard(runs):
  student_dir, _ = runs
  images, labels = _val_data()
  model, variables = _restore(student_dir, 'tiny_fcn')
  x = (images[:3].astype(np.float32) - MEAN) / STD
  colours = visualize.palette('synthetic', NUM_CLASSES)
  panels = visualize.batch_panels(
      x, labels[:3], student=inference.predict_classes(model, variables, x),
      colours=colours, class_names=synthetic.CLASS_NAMES[:NUM_CLASSES],
      max_images=2)
  layout = visualize.panel_layout(
      SIZE, SIZE, 3,
      legend_names=list(synthetic.CLASS_NAMES[:NUM_CLASSES]) + ['ignore'])
  assert panels.shape == (2, layout.height, layout.width, 3)
  assert panels.dtype == np.uint8
  np.testing.assert_array_equal(_column(panels[1], layout, 0, 1), images[1])
  np.testing.assert_array_equal(
      _column(panels[1], layout, 2, 1),
      colours[_classes(model, variables, images[1:2])[0]])


@pytest.mark.parametrize('overrides, match', [
    ({'benchmark.models': ('student', 'tutor')},
     r"config.benchmark.models: .*valid: a non-empty tuple of \['teacher'"),
    ({'export.platforms': ('gpu',)},
     r"config.export.platforms: .*\['cpu', 'cuda', 'rocm', 'tpu'\]"),
    ({'predict.split': 'test'},
     r"config.predict.split: unknown split 'test' of 'synthetic'"),
    ({'predict.folder': '/nonexistent/images'},
     "config.predict.folder: '/nonexistent/images' is not a folder"),
    ({'benchmark.resolution': (32,)}, 'config.benchmark.resolution: must be'),
    ({'predict.num_images': 0}, 'config.predict.num_images: must be a positive'),
])
def test_tool_config_errors(overrides, match):
  with pytest.raises(ValueError, match=match):
    config_lib.validate(_config(**overrides))


def test_panel_names_are_safe_file_names_for_sliced_splits():
  from kdseg import predict
  from kdseg.data import source as source_lib
  source = source_lib.from_arrays(
      np.zeros((2, 4, 4, 3), np.uint8), np.zeros((2, 4, 4), np.uint8),
      num_classes=2, split='train[80%:]')
  names = [name for name, _, _ in predict.split_examples(source, 2)]
  assert names == ['train_80_0000', 'train_80_0001']
