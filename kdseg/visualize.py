"""Pictures of predictions and confusion matrices, as uint8 RGB arrays.

- Palettes: a data set's own class colours (CamVid's standard ones) or a
  deterministic palette for any class count (`palette`).
- Panels: columns such as image | ground truth | teacher | student, each
  titled, over a legend of class colours (`panel`, `prediction_panel`), and
  a batch of them for TensorBoard (`batch_panels`) from class maps that the
  caller predicted (`kdseg.inference.predict_classes`): drawing runs no model.
- Confusion matrices, row-normalised, with class names (`confusion_image`).

Pictures are NumPy arrays in and out; Pillow draws the text (`draw_text`)
and writes the files (`write_png`).
"""

import dataclasses
import functools
import os
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from kdseg.data import transforms

# CamVid's standard colours (RGB), in `kdseg.data.camvid.CLASS_NAMES` order.
CAMVID_COLOURS = (
    (128, 128, 128),  # Sky
    (128, 0, 0),  # Building
    (192, 192, 128),  # Pole
    (128, 64, 128),  # Road
    (0, 0, 192),  # Pavement (sidewalk)
    (128, 128, 0),  # Tree
    (192, 128, 128),  # SignSymbol
    (64, 64, 128),  # Fence
    (64, 0, 128),  # Car
    (64, 64, 0),  # Pedestrian
    (0, 128, 192),  # Bicyclist
)
# Data sets with their own class colours; the others get `generated_palette`.
_PALETTES = {'camvid': CAMVID_COLOURS}

IGNORE_COLOUR = (0, 0, 0)  # Unlabelled pixels (CamVid's void colour).
PAPER = (255, 255, 255)  # Background of panels and pictures.
INK = (0, 0, 0)  # Text.
MARGIN = 4  # Pixels around a picture's content.
GAP = 4  # Pixels between panel columns.
_MIN_PANEL_HEIGHT = 128  # `auto_scale` zooms images to at least this.


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Arrays of hue, saturation and value in [0, 1] -> float RGB [..., 3]."""
  k = (np.array([5.0, 3.0, 1.0]) + h[..., None] * 6) % 6
  ramp = np.clip(np.minimum(k, 4 - k), 0, 1)
  return v[..., None] * (1 - s[..., None] * ramp)


def generated_palette(num_classes: int) -> np.ndarray:
  """A deterministic palette of `num_classes` distinct colours, uint8 [C, 3].

  Hues step by the golden angle, so neighbouring classes differ strongly and
  the first colours do not change when classes are added; saturation and
  value alternate to separate hues that come close again. No colour is black
  (the ignore colour) or white (the paper).
  """
  i = np.arange(num_classes)
  hue = (i * 0.381966) % 1.0
  saturation = np.array([0.85, 0.55, 0.7])[i % 3]
  value = np.array([0.95, 0.8, 0.6])[(i // 3) % 3]
  return np.round(255 * _hsv_to_rgb(hue, saturation, value)).astype(np.uint8)


def palette(dataset: str, num_classes: int) -> np.ndarray:
  """The class colours of `dataset`, uint8 [num_classes, 3]."""
  colours = _PALETTES.get(dataset)
  if colours is not None and len(colours) >= num_classes:
    return np.array(colours[:num_classes], np.uint8)
  return generated_palette(num_classes)


def colorize(labels: np.ndarray, colours: np.ndarray) -> np.ndarray:
  """Class maps int [...] -> uint8 [..., 3] in `colours` [C, 3].

  Values outside [0, C) (the ignore label, padding) get `IGNORE_COLOUR`.
  """
  labels = np.asarray(labels)
  colours = np.asarray(colours, np.uint8)
  table = np.concatenate([colours, np.array([IGNORE_COLOUR], np.uint8)])
  valid = (labels >= 0) & (labels < len(colours))
  return table[np.where(valid, labels, len(colours))]


def denormalize(images: np.ndarray) -> np.ndarray:
  """Pipeline-normalised float images [..., 3] -> uint8 [..., 3]."""
  images = (np.asarray(images, np.float32) * np.array(transforms.STDDEV_RGB) +
            np.array(transforms.MEAN_RGB))
  return np.clip(np.round(images), 0, 255).astype(np.uint8)


def auto_scale(height: int, min_height: int = _MIN_PANEL_HEIGHT) -> int:
  """The smallest whole zoom making `height` at least `min_height` pixels."""
  return max(1, -(-min_height // max(height, 1)))


def zoom(image: np.ndarray, scale: int) -> np.ndarray:
  """Nearest-neighbour upscaling of [H, W, ...] by a whole factor."""
  return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


# Text -----------------------------------------------------------------------

_FONT_SIZE = 11  # Pixels per text scale; '100' fits in a confusion cell.
# Glyphs that reach highest and lowest: every text of a scale gets the height
# of this one, so that lines and swatches line up whatever the words.
_TALL_TEXT = 'Ag|(y'


@functools.cache
def _font(scale: int):
  """(Pillow font, whole-pixel zoom) for text at `scale`.

  Pillow's default font is a TrueType font of any size where Pillow has
  FreeType (and is 10.1 or newer); otherwise it is one small bitmap font,
  zoomed by whole pixels instead.
  """
  try:
    return ImageFont.load_default(size=_FONT_SIZE * scale), 1
  except (TypeError, ImportError, OSError):
    return ImageFont.load_default(), scale


def _extent(font, text: str) -> tuple[int, int]:
  """(shift, width) in font pixels: ink left of the origin (a negative
  bearing) is shifted right into the box instead of cut off."""
  if not text:
    return 0, 0
  left, _, right, _ = font.getbbox(text)
  shift = max(0, -int(left))
  return shift, int(right) + shift


def text_size(text: str, scale: int = 1) -> tuple[int, int]:
  """(height, width) in pixels of `text` drawn at `scale`."""
  font, repeat = _font(scale)
  height = int(font.getbbox(_TALL_TEXT)[3])
  return height * repeat, _extent(font, text)[1] * repeat


def text_mask(text: str, scale: int = 1) -> np.ndarray:
  """The ink of `text` as coverage in [0, 1], float [*text_size(text)].

  Edges are anti-aliased, so partly covered pixels have fractions.
  """
  font, repeat = _font(scale)
  height, width = (n // repeat for n in text_size(text, scale))
  shift, _ = _extent(font, text)
  image = Image.new('L', (max(width, 1), height))
  ImageDraw.Draw(image).text((shift, 0), text, fill=255, font=font)
  mask = np.asarray(image, np.float32)[:, :width] / 255
  return zoom(mask, repeat)


def _blend(canvas: np.ndarray, mask: np.ndarray, y: int, x: int,
           colour) -> np.ndarray:
  """Paints `colour` with coverage `mask` at (y, x) into `canvas`, in place,
  clipped to the canvas; pixels without ink keep their exact values."""
  height, width = canvas.shape[:2]
  y0, x0 = max(y, 0), max(x, 0)
  y1, x1 = min(y + mask.shape[0], height), min(x + mask.shape[1], width)
  if y1 > y0 and x1 > x0:
    region = canvas[y0:y1, x0:x1]
    alpha = mask[y0 - y:y1 - y, x0 - x:x1 - x, None]
    region[:] = np.round(region * (1 - alpha) +
                         np.asarray(colour, np.float32) * alpha)
  return canvas


def draw_text(canvas: np.ndarray, text: str, y: int, x: int, colour,
              scale: int = 1) -> np.ndarray:
  """Draws `text` with its top-left corner at (y, x) into `canvas` (uint8
  [H, W, 3]), in place and clipped to it; returns `canvas`."""
  return _blend(canvas, text_mask(text, scale), y, x, colour)


def write_png(path: str, image: np.ndarray) -> str:
  """Writes uint8 [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] (greyscale, RGB,
  RGBA) to `path` as a PNG; returns `path`.

  The file appears whole or not at all: it is written under a temporary
  name in the same folder and then renamed, so that a reader never sees half
  a picture and a crash leaves any earlier picture in place.
  """
  image = np.asarray(image)
  shape = image.shape
  if image.dtype != np.uint8:
    raise ValueError(f'PNG pixels must be uint8; got {image.dtype}.')
  if image.ndim == 3 and shape[2] == 1:
    image = image[..., 0]
  if image.ndim not in (2, 3) or image.shape[2:] not in ((), (3,), (4,)):
    raise ValueError('Expected [H, W], [H, W, 1], [H, W, 3] or [H, W, 4]; got '
                     f'{shape}.')
  if not image.size:
    raise ValueError(f'Empty image {shape}.')
  temporary = f'{path}.{os.getpid()}.tmp'
  try:
    Image.fromarray(np.ascontiguousarray(image)).save(temporary, format='PNG')
    os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)
  return path


# Panels ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PanelLayout:
  """Where `panel` puts things, in pixels.

  Column i occupies rows [top, top + cell_height) and columns
  [lefts[i], lefts[i] + cell_width); the legend starts at `legend_top`.
  """
  height: int
  width: int
  top: int
  lefts: tuple[int, ...]
  cell_height: int
  cell_width: int
  text_scale: int
  legend_top: int
  legend_rows: tuple[tuple[tuple[int, int], ...], ...]  # (x, entry) per row.


def _line_height(text_scale: int) -> int:
  return text_size('', text_scale)[0] + 4


def _legend_rows(names: Sequence[str], width: int, text_scale: int):
  """Greedy line filling: each row lists (x, index) of its entries."""
  swatch = text_size('', text_scale)[0]
  rows, row, x = [], [], MARGIN
  for i, name in enumerate(names):
    entry = swatch + 3 + text_size(name, text_scale)[1]
    if row and x + entry > width - MARGIN:
      rows.append(tuple(row))
      row, x = [], MARGIN
    row.append((x, i))
    x += entry + swatch  # A swatch's width between entries.
  if row:
    rows.append(tuple(row))
  return tuple(rows)


def panel_layout(height: int, width: int, num_columns: int, *, scale: int = 1,
                 legend_names: Sequence[str] = ()) -> PanelLayout:
  """The layout of a panel of `num_columns` images of [height, width]."""
  cell_h, cell_w = height * scale, width * scale
  text_scale = 2 if cell_w >= 320 else 1
  top = MARGIN + _line_height(text_scale)
  total_w = 2 * MARGIN + num_columns * cell_w + (num_columns - 1) * GAP
  legend_top = top + cell_h + MARGIN
  rows = _legend_rows(legend_names, total_w, text_scale)
  total_h = legend_top + len(rows) * _line_height(text_scale) + MARGIN
  return PanelLayout(
      height=total_h, width=total_w, top=top,
      lefts=tuple(MARGIN + i * (cell_w + GAP) for i in range(num_columns)),
      cell_height=cell_h, cell_width=cell_w, text_scale=text_scale,
      legend_top=legend_top, legend_rows=rows)


def _fit(text: str, width: int, text_scale: int) -> str:
  """`text` cut to the characters that fit in `width` pixels."""
  while text and text_size(text, text_scale)[1] > width:
    text = text[:-1]
  return text


def panel(columns: Sequence[tuple[str, np.ndarray]], *,
          legend: Sequence[tuple[str, Any]] = (), scale: int = 1
          ) -> np.ndarray:
  """Titled pictures side by side over a legend of colour swatches.

  Args:
    columns: (title, uint8 [H, W, 3]) pairs, all of the same size.
    legend: (name, RGB colour) pairs, drawn as swatches below the pictures.
    scale: whole-pixel zoom of the pictures.

  Returns:
    uint8 [layout.height, layout.width, 3]; see `panel_layout`.
  """
  height, width = columns[0][1].shape[:2]
  for title, picture in columns:
    if picture.shape != (height, width, 3):
      raise ValueError(f'Column {title!r} is {picture.shape}; expected '
                       f'{(height, width, 3)} like the first.')
  layout = panel_layout(height, width, len(columns), scale=scale,
                        legend_names=[name for name, _ in legend])
  ts = layout.text_scale
  canvas = np.full((layout.height, layout.width, 3), PAPER, np.uint8)
  for (title, picture), left in zip(columns, layout.lefts):
    draw_text(canvas, _fit(title, layout.cell_width, ts), MARGIN, left, INK,
              ts)
    canvas[layout.top:layout.top + layout.cell_height,
           left:left + layout.cell_width] = zoom(picture, scale)
  swatch = text_size('', ts)[0]
  for r, row in enumerate(layout.legend_rows):
    y = layout.legend_top + r * _line_height(ts)
    for x, i in row:
      name, colour = legend[i]
      # A framed swatch, so that light colours show on the paper.
      canvas[y:y + swatch, x:x + swatch] = INK
      canvas[y + 1:y + swatch - 1, x + 1:x + swatch - 1] = colour
      draw_text(canvas, name, y, x + swatch + 3, INK, ts)
  return canvas


def prediction_panel(image: np.ndarray, *, colours: np.ndarray,
                     class_names: Sequence[str],
                     truth: Optional[np.ndarray] = None,
                     teacher: Optional[np.ndarray] = None,
                     student: Optional[np.ndarray] = None,
                     scale: int = 1) -> np.ndarray:
  """image | ground truth | teacher | student, the absent ones left out.

  Args:
    image: uint8 [H, W, 3].
    colours: uint8 [C, 3], see `palette`.
    class_names: C names for the legend.
    truth, teacher, student: optional int class maps [H, W]; truth values
      outside [0, C) (the ignore label) are drawn in `IGNORE_COLOUR`.
    scale: whole-pixel zoom.

  Returns:
    uint8 [H', W', 3], laid out by `panel_layout`.
  """
  columns = [('image', image)]
  for title, labels in (('ground truth', truth), ('teacher', teacher),
                        ('student', student)):
    if labels is not None:
      columns.append((title, colorize(labels, colours)))
  legend = list(zip(class_names, colours.tolist()))
  if truth is not None:
    legend.append(('ignore', IGNORE_COLOUR))
  return panel(columns, legend=legend, scale=scale)


def batch_panels(images: np.ndarray, labels: Optional[np.ndarray], *,
                 student: np.ndarray, colours: np.ndarray,
                 class_names: Sequence[str],
                 teacher: Optional[np.ndarray] = None, max_images: int = 4,
                 scale: int = 1) -> np.ndarray:
  """Prediction panels of a pipeline batch, e.g. for TensorBoard images.

  Args:
    images: float32 [N, H, W, 3] normalised by the input pipeline.
    labels: int [N, H, W] ground truth, or None.
    student: int [N, H, W] the student's class maps of `images`, e.g. from
      `kdseg.inference.predict_classes` (drawing runs no model).
    colours, class_names: see `prediction_panel`.
    teacher: the teacher's class maps like `student`, or None (no teacher
      column).
    max_images: panels for the first this many images.
    scale: whole-pixel zoom.

  Returns:
    uint8 [min(N, max_images), H', W', 3].
  """
  pictures = denormalize(np.asarray(images)[:max_images])

  def first(maps):
    return None if maps is None else np.asarray(maps)[:max_images]

  labels, student, teacher = first(labels), first(student), first(teacher)
  return np.stack([
      prediction_panel(
          pictures[i], colours=colours, class_names=class_names,
          truth=None if labels is None else labels[i],
          teacher=None if teacher is None else teacher[i],
          student=student[i], scale=scale)
      for i in range(len(pictures))])


# Confusion matrices ---------------------------------------------------------

_CELL = 24  # Room for '100' at text scale 1 with a margin.
_LOW = np.array(PAPER, np.float64)  # Colour of 0% ...
_HIGH = np.array((8, 48, 107), np.float64)  # ... and of 100% of a row.
_EMPTY_ROW = (220, 220, 220)  # Rows without ground-truth pixels.
_CAPTION = 'rows: true class, columns: predicted, % of row'


def ramp(fraction: np.ndarray) -> np.ndarray:
  """Cell colours of row fractions in [0, 1]: uint8 [..., 3]."""
  f = np.asarray(fraction, np.float64)[..., None]
  return np.round(_LOW + f * (_HIGH - _LOW)).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class ConfusionLayout:
  """Cell (i, j) spans rows top + i * pitch and columns left + j * pitch, for
  `cell` pixels; `pitch` = cell + 1 leaves a grid line."""
  height: int
  width: int
  top: int
  left: int
  cell: int
  pitch: int


def _axis_labels(class_names: Sequence[str]) -> list[str]:
  return [f'{i} {name}' for i, name in enumerate(class_names)]


def confusion_layout(class_names: Sequence[str]) -> ConfusionLayout:
  """The layout of `confusion_image` for these classes."""
  labels = _axis_labels(class_names)
  label_w = max(text_size(s)[1] for s in labels)
  n, pitch = len(class_names), _CELL + 1
  top = MARGIN + _line_height(1) + label_w + 4
  left = MARGIN + label_w + 4
  width = max(left + n * pitch + MARGIN,
              2 * MARGIN + text_size(_CAPTION)[1])
  return ConfusionLayout(height=top + n * pitch + MARGIN, width=width,
                         top=top, left=left, cell=_CELL, pitch=pitch)


def row_fractions(cm: np.ndarray) -> np.ndarray:
  """Each row of a confusion matrix divided by its sum (NaN for empty rows)."""
  cm = np.asarray(cm, np.float64)
  totals = cm.sum(axis=1, keepdims=True)
  with np.errstate(divide='ignore', invalid='ignore'):
    return np.where(totals > 0, cm / totals, np.nan)


def confusion_image(cm: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
  """A row-normalised confusion matrix as a picture.

  Args:
    cm: [C, C] counts, rows the truth, columns the prediction.
    class_names: C names; rows and columns are labelled 'index name' (the
      column labels read upwards).

  Returns:
    uint8 [H, W, 3]: each cell shaded by `ramp` of its row fraction and
    labelled with it in percent; rows without truth pixels are grey.
  """
  fractions = row_fractions(cm)
  n = len(class_names)
  if fractions.shape != (n, n):
    raise ValueError(f'Confusion matrix {fractions.shape} for {n} classes.')
  layout = confusion_layout(class_names)
  canvas = np.full((layout.height, layout.width, 3), PAPER, np.uint8)
  draw_text(canvas, _CAPTION, MARGIN, MARGIN, INK)
  for i, label in enumerate(_axis_labels(class_names)):
    text_h, text_w = text_size(label)
    y = layout.top + i * layout.pitch + (layout.cell - text_h) // 2
    draw_text(canvas, label, y, layout.left - 4 - text_w, INK)
    # Column label: the text turned a quarter left, its end on the matrix.
    mask = np.rot90(text_mask(label))
    x = layout.left + i * layout.pitch + (layout.cell - mask.shape[1]) // 2
    _blend(canvas, mask, layout.top - 4 - mask.shape[0], x, INK)
  for i in range(n):
    for j in range(n):
      y, x = layout.top + i * layout.pitch, layout.left + j * layout.pitch
      f = fractions[i, j]
      cell = canvas[y:y + layout.cell, x:x + layout.cell]
      if np.isnan(f):
        cell[:] = _EMPTY_ROW
        continue
      cell[:] = ramp(f)
      text = f'{100 * f:.0f}'
      th, tw = text_size(text)
      draw_text(cell, text, (layout.cell - th) // 2, (layout.cell - tw) // 2,
                PAPER if f > 0.5 else INK)
  return canvas
