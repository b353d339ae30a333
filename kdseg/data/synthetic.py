"""Procedural segmentation scenes: textured shapes on a textured background.

Every scene is a pure function of `(seed, index)`, so any split or slice can be
regenerated independently and bit-exactly. Classes differ by shape and by the
kind of texture painted on them; colours are drawn per instance from the same
distribution for every class (background included), so colour alone carries no
information about the class. Objects overlap at random (painter's order), and
ring holes show whatever lies underneath, so some pixels need context to label.

  class       shape                        texture (random period/angle/phase)
  background  whole image                  smooth low-frequency blotches, grain
  disc        disc                         sinusoidal stripes
  bar         rectangle, aspect ~3         checkerboard
  triangle    near-equilateral triangle    speckle (white noise)
  ring        annulus                      polka dots
  cross       plus sign                    flat shade
  diamond     rhombus                      concentric rings

Textures modulate the brightness of a per-instance random hue; every instance
(background included) draws its hue from the same distribution.
"""

from typing import Callable, Optional

import numpy as np

from kdseg.data import source as source_lib

CLASS_NAMES = ('background', 'disc', 'bar', 'triangle', 'ring', 'cross',
               'diamond')
MAX_CLASSES = len(CLASS_NAMES)

# Object sizes and texture periods are given for 64x64 images and scale with
# min(height, width) / 64, so larger scenes look like zoomed-in copies.
_REF_SIZE = 64.0
_RADIUS_RANGE = (8.0, 16.0)
_EXTENT = 1.75  # Max distance of a shape's pixel from its centre, in radii.
_PERIOD_RANGE = (6.0, 10.0)
_BG_PERIOD_RANGE = (20.0, 64.0)
_OBJECTS_RANGE = (3, 6)  # Inclusive.
_BG_GRAIN_STD = 4.0  # Film grain on the background only.
_PIXEL_NOISE_STD = 4.0  # Sensor noise on the whole image.

_Texture = Callable[[np.random.Generator, np.ndarray, np.ndarray, float],
                    np.ndarray]


def _stripes(rng, u, v, period):
  del v
  return 0.5 + 0.5 * np.sin(2 * np.pi * u / period + rng.uniform(0, 2 * np.pi))


def _checker(rng, u, v, period):
  du, dv = rng.uniform(0, period, size=2)
  cell = period / 2
  return (np.floor((u + du) / cell) + np.floor((v + dv) / cell)) % 2


def _dots(rng, u, v, period):
  du, dv = rng.uniform(0, period, size=2)
  pu = (u + du) % period - period / 2
  pv = (v + dv) % period - period / 2
  return (pu**2 + pv**2 < (0.27 * period)**2).astype(np.float32)


def _solid(rng, u, v, period):
  del period
  return np.full(np.broadcast_shapes(u.shape, v.shape), rng.uniform(0.2, 0.8),
                 np.float32)


def _speckle(rng, u, v, period):
  del period
  return rng.random(np.broadcast_shapes(u.shape, v.shape))


def _concentric(rng, u, v, period):
  return 0.5 + 0.5 * np.sin(2 * np.pi * np.sqrt(u**2 + v**2) / period +
                            rng.uniform(0, 2 * np.pi))


# Texture of each foreground class (index = class id - 1).
_TEXTURES: tuple[_Texture, ...] = (_stripes, _checker, _speckle, _dots, _solid,
                                   _concentric)


def _shape_mask(class_id, rng, u, v, radius):
  """Boolean mask of a shape in its own frame; u, v are offsets from its centre.

  Every shape lies within `_EXTENT * radius` of its centre.
  """
  name = CLASS_NAMES[class_id]
  if name == 'disc':
    return u**2 + v**2 < radius**2
  if name == 'bar':
    half_len = radius * rng.uniform(1.2, 1.6)
    half_wid = radius * rng.uniform(0.4, 0.55)
    return (np.abs(u) < half_len) & (np.abs(v) < half_wid)
  if name == 'triangle':
    angles = 2 * np.pi * np.arange(3) / 3 + rng.uniform(-0.3, 0.3, size=3)
    r = radius * rng.uniform(1.2, 1.5)
    pu, pv = r * np.cos(angles), r * np.sin(angles)
    mask = np.ones(np.broadcast_shapes(u.shape, v.shape), bool)
    # Vertices are counter-clockwise: the inside is left of every edge.
    for k in range(3):
      eu, ev = pu[(k + 1) % 3] - pu[k], pv[(k + 1) % 3] - pv[k]
      mask &= eu * (v - pv[k]) - ev * (u - pu[k]) >= 0
    return mask
  if name == 'ring':
    outer = radius * 1.15
    inner = outer * rng.uniform(0.4, 0.6)
    d2 = u**2 + v**2
    return (d2 < outer**2) & (d2 >= inner**2)
  if name == 'cross':
    half_wid = radius * rng.uniform(0.25, 0.35)
    return (((np.abs(u) < radius) & (np.abs(v) < half_wid)) |
            ((np.abs(v) < radius) & (np.abs(u) < half_wid)))
  if name == 'diamond':
    a = radius * 1.15
    b = radius * rng.uniform(0.6, 0.9)
    return np.abs(u) / a + np.abs(v) / b < 1
  raise ValueError(f'No shape for class {class_id} ({name}).')


def _colour_pair(rng):
  """Two RGB colours (float32 [2, 3]): a random hue, in a dark and light shade.

  The texture modulates brightness, so a colour-blind luminance edge detector
  sees it, while the colour itself is uniform random for every class.
  """
  base = rng.uniform(0, 255, size=3)
  dark = base * rng.uniform(0.15, 0.45)
  light = base + (255 - base) * rng.uniform(0.35, 0.7)
  # Random order: e.g. dots are as often dark on light as light on dark, so
  # textures with uneven duty cycles do not shift the mean brightness.
  pair = [dark, light] if rng.random() < 0.5 else [light, dark]
  return np.stack(pair).astype(np.float32)


def _blend(texture, colours):
  """Texture values in [0, 1] (shape S) -> float32 colours S + [3]."""
  t = texture.astype(np.float32)[..., None]
  return colours[0] + t * (colours[1] - colours[0])


def _background(rng, height, width, scale):
  """Smooth random blotches (a few low-frequency plane waves) plus grain."""
  y = np.arange(height, dtype=np.float32)[:, None] + 0.5
  x = np.arange(width, dtype=np.float32)[None, :] + 0.5
  t = np.zeros((height, width), np.float32)
  for _ in range(3):
    theta = rng.uniform(0, np.pi)
    period = scale * rng.uniform(*_BG_PERIOD_RANGE)
    t += np.sin(2 * np.pi * (x * np.cos(theta) + y * np.sin(theta)) / period +
                rng.uniform(0, 2 * np.pi))
  t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
  canvas = _blend(t, _colour_pair(rng))
  grain = rng.normal(0, _BG_GRAIN_STD, size=(height, width, 1))
  return canvas + grain.astype(np.float32)


def make_scene(index: int, *, height: int = 64, width: int = 64,
               num_classes: int = 5,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Renders scene `index` of the stream identified by `seed`.

  Args:
    index: Non-negative example index.
    height: Image height in pixels.
    width: Image width in pixels.
    num_classes: Number of classes including background (class 0); uses the
      first `num_classes` entries of `CLASS_NAMES`, 2 <= num_classes <= 7.
    seed: Non-negative integer identifying the stream.

  Returns:
    image: uint8 [height, width, 3].
    label: uint8 [height, width], values in [0, num_classes).
  """
  if not 2 <= num_classes <= MAX_CLASSES:
    raise ValueError(f'num_classes must be in [2, {MAX_CLASSES}], got '
                     f'{num_classes}.')
  rng = np.random.default_rng([seed, index])
  scale = min(height, width) / _REF_SIZE
  canvas = _background(rng, height, width, scale)
  label = np.zeros((height, width), np.uint8)
  for _ in range(rng.integers(_OBJECTS_RANGE[0], _OBJECTS_RANGE[1] + 1)):
    class_id = int(rng.integers(1, num_classes))
    radius = scale * rng.uniform(*_RADIUS_RANGE)
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    # Work on the bounding box only, it is much smaller than the image.
    extent = _EXTENT * radius
    y0, y1 = max(int(cy - extent), 0), min(int(cy + extent) + 1, height)
    x0, x1 = max(int(cx - extent), 0), min(int(cx + extent) + 1, width)
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx
    # Shape and texture have independent orientations.
    angle, tex_angle = rng.uniform(0, 2 * np.pi, size=2)
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    mask = _shape_mask(class_id, rng, u, v, radius)
    tu = dx * np.cos(tex_angle) + dy * np.sin(tex_angle)
    tv = -dx * np.sin(tex_angle) + dy * np.cos(tex_angle)
    period = scale * rng.uniform(*_PERIOD_RANGE)
    texture = _TEXTURES[class_id - 1](rng, tu, tv, period)
    mask = np.broadcast_to(mask, texture.shape)
    canvas[y0:y1, x0:x1][mask] = _blend(texture[mask], _colour_pair(rng))
    label[y0:y1, x0:x1][mask] = class_id
  noise = rng.normal(0, _PIXEL_NOISE_STD, size=canvas.shape)
  canvas += noise.astype(np.float32)
  image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
  return image, label


def make_scenes(num: int, *, height: int = 64, width: int = 64,
                num_classes: int = 5, seed: int = 0,
                start: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Renders scenes `start, ..., start + num - 1` of stream `seed`.

  Scene i does not depend on `num` or `start`, so
  `make_scenes(n, seed=s)[k][i] == make_scenes(1, seed=s, start=i)[k][0]`.

  Returns:
    images: uint8 [num, height, width, 3].
    labels: uint8 [num, height, width], values in [0, num_classes).
  """
  images = np.empty((num, height, width, 3), np.uint8)
  labels = np.empty((num, height, width), np.uint8)
  for i in range(num):
    images[i], labels[i] = make_scene(start + i, height=height, width=width,
                                      num_classes=num_classes, seed=seed)
  return images, labels


# Each split is an independent stream; its seed is derived from (seed, split).
SPLITS = {'train': 0, 'val': 1}
DEFAULT_NUM_EXAMPLES = {'train': 1024, 'val': 256}


def split_seed(seed: int, split: str) -> int:
  """The `make_scenes` seed of `split` for the user-level `seed`."""
  if split not in SPLITS:
    raise ValueError(f'Unknown split {split!r}; valid splits: {list(SPLITS)}.')
  return int(np.random.SeedSequence([seed, SPLITS[split]]).generate_state(1)[0])


def make_source(split: str, *, num_examples: Optional[int] = None,
                height: int = 64, width: int = 64, num_classes: int = 5,
                seed: int = 0, ignore_index: int = 255) -> source_lib.Source:
  """Renders a synthetic split in memory and wraps it as a random-access Source.

  Args:
    split: 'train' or 'val' (independent scenes).
    num_examples: Number of scenes; defaults to `DEFAULT_NUM_EXAMPLES[split]`.
    height: Image height.
    width: Image width.
    num_classes: Classes including background, see `make_scene`.
    seed: Data seed; train and val use different streams derived from it.
    ignore_index: Ignore label used by the pipelines (never in the data).
  """
  if num_examples is None:
    num_examples = DEFAULT_NUM_EXAMPLES.get(split, 0)
  images, labels = make_scenes(num_examples, height=height, width=width,
                               num_classes=num_classes,
                               seed=split_seed(seed, split))
  return source_lib.from_arrays(
      images, labels, num_classes=num_classes,
      class_names=CLASS_NAMES[:num_classes], ignore_index=ignore_index,
      name='synthetic', split=split)
