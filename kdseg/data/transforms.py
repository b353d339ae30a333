"""Per-example TensorFlow transforms: training augmentation and normalisation.

All randomness is stateless (`tf.random.stateless_*`) and comes from an
explicit seed, so an example's augmentation is a pure function of its seed and
does not depend on thread scheduling or on which examples were seen before.
"""

from typing import Optional, Sequence

from kdseg.data import tf_setup

# ImageNet statistics in [0, 255] pixel units (RGB).
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)

# Photometric jitter strengths; kept small so colours stay plausible.
_MAX_BRIGHTNESS_DELTA = 0.1  # In [0, 1] pixel units.
_CONTRAST_RANGE = (0.8, 1.2)
_SATURATION_RANGE = (0.8, 1.2)


def normalize(image):
  """uint8 (or float in [0, 255]) [..., 3] -> float32 (x - mean) / std."""
  tf = tf_setup.import_tensorflow()
  image = tf.cast(image, tf.float32)
  return (image - tf.constant(MEAN_RGB)) / tf.constant(STDDEV_RGB)


def pad_to_size(image, label, size: Sequence[int], *, ignore_index: int):
  """Pads at the bottom/right up to at least `size` = (h, w).

  The image is padded with the dataset mean (it normalises to ~0, the least
  surprising input for the network) and the label with `ignore_index` (padded
  pixels are never scored). Larger inputs are left as they are.

  Args:
    image: float32 [H, W, 3] in [0, 255].
    label: int32 [H, W].
    size: Minimum output size (h, w).
    ignore_index: Label fill value.

  Returns:
    image float32 [max(H, h), max(W, w), 3], label int32 [max(H, h), max(W, w)].
  """
  tf = tf_setup.import_tensorflow()
  shape = tf.shape(label)
  pad_h = tf.maximum(size[0] - shape[0], 0)
  pad_w = tf.maximum(size[1] - shape[1], 0)
  mean = tf.constant(MEAN_RGB)
  # tf.pad takes a scalar fill value, so pad the mean-centred image with 0.
  image = tf.pad(image - mean, [[0, pad_h], [0, pad_w], [0, 0]]) + mean
  label = tf.pad(label, [[0, pad_h], [0, pad_w]], constant_values=ignore_index)
  return image, label


def _photometric(image, seeds):
  """Small brightness/contrast/saturation jitter of float32 [H, W, 3] pixels."""
  tf = tf_setup.import_tensorflow()
  image = image / 255.0
  image = tf.image.stateless_random_brightness(
      image, _MAX_BRIGHTNESS_DELTA, seed=seeds[0])
  image = tf.image.stateless_random_contrast(
      image, *_CONTRAST_RANGE, seed=seeds[1])
  image = tf.image.stateless_random_saturation(
      image, *_SATURATION_RANGE, seed=seeds[2])
  return tf.clip_by_value(image, 0.0, 1.0) * 255.0


def _sample_axis(out_n, crop_n, offset, scaled_n, image_n, logits_n):
  """Logits-grid coordinates (float32 [out_n]) of the output cells of one axis.

  Every map is a half-pixel grid over the same scene: output cell i covers
  crop pixels, which sit at `offset` in the image resized to `scaled_n`
  pixels from `image_n`, whose logits have `logits_n` cells.
  """
  tf = tf_setup.import_tensorflow()
  i = tf.range(out_n, dtype=tf.float32)
  crop = (i + 0.5) * (tf.cast(crop_n, tf.float32) / tf.cast(out_n, tf.float32))
  scaled = crop - 0.5 + tf.cast(offset, tf.float32)
  image = (scaled + 0.5) * (tf.cast(image_n, tf.float32) /
                            tf.cast(scaled_n, tf.float32))
  return image * (tf.cast(logits_n, tf.float32) /
                  tf.cast(image_n, tf.float32)) - 0.5


def _bilinear_gather(values, coords, axis: int):
  """Samples `values` along `axis` at float `coords` (clamped to the edge)."""
  tf = tf_setup.import_tensorflow()
  n = tf.shape(values)[axis]
  coords = tf.clip_by_value(coords, 0.0, tf.cast(n - 1, tf.float32))
  low = tf.floor(coords)
  frac = coords - low
  low = tf.cast(low, tf.int32)
  high = tf.minimum(low + 1, n - 1)
  shape = [-1 if a == axis else 1 for a in range(3)]
  frac = tf.reshape(frac, shape)
  return (tf.gather(values, low, axis=axis) * (1.0 - frac) +
          tf.gather(values, high, axis=axis) * frac)


def warp_logits(logits, *, image_size, scaled_size, top, left, flip,
                crop_size: Sequence[int], out_size: Sequence[int]):
  """A full image's logits as they would sit on one augmented crop.

  The image (`image_size`) was resized to `scaled_size`, padded, cropped at
  (top, left) to `crop_size` and flipped left-right when `flip`; this
  samples `logits` (the image's logits on a half-pixel grid of any size, as
  `kdseg.losses.resize_to` reads them) bilinearly at the centres of an
  `out_size` grid over that crop, in float32. Coordinates outside the image
  (padding) take the nearest edge value; their labels are ignored anyway.

  Args:
    logits: float [h, w, C].
    image_size, scaled_size: int32 (H, W) before and after the random scale.
    top, left: int32 crop offsets in the scaled image.
    flip: bool scalar.
    crop_size, out_size: (h, w) of the crop and of the output grid.

  Returns:
    float32 [out_h, out_w, C].
  """
  tf = tf_setup.import_tensorflow()
  logits = tf.cast(logits, tf.float32)
  shape = tf.shape(logits)
  rows = _sample_axis(out_size[0], crop_size[0], top, scaled_size[0],
                      image_size[0], shape[0])
  cols = _sample_axis(out_size[1], crop_size[1], left, scaled_size[1],
                      image_size[1], shape[1])
  out = _bilinear_gather(_bilinear_gather(logits, rows, 0), cols, 1)
  # Output cells mirror exactly: cell j of the flipped crop is cell
  # out_w - 1 - j of the unflipped one.
  out = tf.cond(flip, lambda: tf.reverse(out, [1]), lambda: out)
  return tf.ensure_shape(out, [*out_size, None])


def augment_train(image, label, *, seed, crop_size: Sequence[int],
                  scale_range: Sequence[float] = (0.5, 2.0), hflip: bool = True,
                  ignore_index: int = 255, photometric: bool = False,
                  logits=None, logits_size: Optional[Sequence[int]] = None):
  """Random scale, (photometric jitter), pad, random crop and horizontal flip.

  Args:
    image: uint8 [H, W, 3].
    label: integer [H, W], values in valid classes or `ignore_index`.
    seed: int32/int64 [2] stateless seed; the output is a pure function of
      (image, label, seed, options).
    crop_size: Output size (h, w).
    scale_range: Resize factor drawn uniformly from [min, max]; the image is
      resized bilinearly and the label with nearest neighbour (so no new label
      values appear).
    hflip: Flip image and label left-right together with probability 1/2.
    ignore_index: Fill value of padded label pixels.
    photometric: Apply small brightness/contrast/saturation jitter.
    logits: Optional [h, w, C] logits of the whole image (a cached teacher's):
      they follow the same scale, crop and flip (`warp_logits`); photometric
      jitter does not change them.
    logits_size: (h, w) of the warped logits, e.g. the teacher's output size
      on a crop; required with `logits`.

  Returns:
    image: uint8 [crop_h, crop_w, 3].
    label: int32 [crop_h, crop_w].
    logits: float32 [*logits_size, C], only when `logits` is given.
  """
  tf = tf_setup.import_tensorflow()
  crop_h, crop_w = crop_size
  seeds = tf.random.experimental.stateless_split(seed, num=7)
  label = tf.cast(label, tf.int32)

  image_size = tf.shape(label)[:2]
  shape = tf.cast(image_size, tf.float32)
  scale = tf.random.stateless_uniform([], seeds[0], minval=scale_range[0],
                                      maxval=scale_range[1])
  new_size = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), 1)
  image = tf.image.resize(image, new_size, method='bilinear')  # float32
  label = tf.image.resize(label[..., None], new_size, method='nearest')[..., 0]

  if photometric:
    image = _photometric(image, seeds[1:4])

  image, label = pad_to_size(image, label, crop_size, ignore_index=ignore_index)

  padded = tf.shape(label)
  top = tf.random.stateless_uniform([], seeds[4], minval=0,
                                    maxval=padded[0] - crop_h + 1,
                                    dtype=tf.int32)
  left = tf.random.stateless_uniform([], seeds[5], minval=0,
                                     maxval=padded[1] - crop_w + 1,
                                     dtype=tf.int32)
  image = image[top:top + crop_h, left:left + crop_w]
  label = label[top:top + crop_h, left:left + crop_w]

  flip = tf.constant(False)
  if hflip:
    flip = tf.random.stateless_uniform([], seeds[6]) < 0.5
    image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
    label = tf.cond(flip, lambda: tf.reverse(label, [1]), lambda: label)

  image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
  image = tf.ensure_shape(image, [crop_h, crop_w, 3])
  label = tf.ensure_shape(label, [crop_h, crop_w])
  if logits is None:
    return image, label
  if logits_size is None:
    raise ValueError('augment_train: logits_size is required with logits.')
  logits = warp_logits(logits, image_size=image_size, scaled_size=new_size,
                       top=top, left=left, flip=flip, crop_size=crop_size,
                       out_size=logits_size)
  return image, label, logits
