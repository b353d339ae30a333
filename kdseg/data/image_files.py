"""Image and mask files: pairing them by name and reading them with checks.

Used while preparing data sets from folders (`segmentation_folder`, ADE20K).
Every pair is decoded once and checked (decodable, same size, only known mask
values), then turned into what the TFDS records store: the image as an encoded
RGB image (the original bytes when already an RGB PNG or JPEG), the mask as a
one-channel uint8 PNG of class indices with `STORED_IGNORE` (255) for ignored
pixels. Nothing in this module touches a data set that is already prepared.

Masks must be PNG (lossless: a JPEG mask has made-up values along every
edge): 8- or 16-bit greyscale, 1/2/4-bit greyscale, palette (the palette
index is the value, as in Pascal VOC style masks), or 8-bit RGB(A) whose
three channels are equal. Pillow reads them.
"""

import dataclasses
import os
from typing import Mapping, Optional, Sequence, Union

import numpy as np
from PIL import Image

from kdseg.data import tf_setup
from kdseg.data import tfds_source

tf = tf_setup.import_tensorflow()

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.gif')
MASK_SUFFIXES = ('.png',)
STORED_IGNORE = tfds_source.STORED_IGNORE

_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_JPEG_SIGNATURE = b'\xff\xd8'
# PNG colour types (IHDR byte 25).
_GREY, _RGB, _PALETTE, _GREY_ALPHA, _RGBA = 0, 2, 3, 4, 6

ValueMap = Union[Mapping[Union[int, str], int], Sequence[Sequence[int]]]


def stem(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


def list_files(folder: str, suffixes: Sequence[str]) -> list[str]:
  """Names of the visible files in `folder` that end with one of `suffixes`."""
  return sorted(name for name in os.listdir(folder)
                if not name.startswith('.') and
                name.lower().endswith(tuple(suffixes)) and
                os.path.isfile(os.path.join(folder, name)))


def pair_files(image_dir: str, mask_dir: str, *,
               mask_suffix: str = '') -> list[tuple[str, str, str]]:
  """Pairs `image_dir/X.<image suffix>` with `mask_dir/X<mask_suffix>.png`.

  Returns:
    (stem, image path, mask path) triples sorted by stem.

  Raises:
    ValueError: If a stem has two images, an image has no mask, a mask has no
      image, or there are no pairs; the message lists examples.
  """
  images = {}
  for name in list_files(image_dir, IMAGE_SUFFIXES):
    key = stem(name)
    if key in images:
      raise ValueError(
          f'{image_dir} holds two images named {key!r}: {images[key]} and '
          f'{name}. Fix: keep one of them.')
    images[key] = name
  masks = {}
  for name in list_files(mask_dir, MASK_SUFFIXES):
    key = stem(name)
    if mask_suffix:
      if not key.endswith(mask_suffix):
        continue
      key = key[:-len(mask_suffix)]
    masks[key] = name
  no_mask = sorted(set(images) - set(masks))
  no_image = sorted(set(masks) - set(images))
  # Masks saved as JPEG (lossy: made-up class values along every edge) are
  # not masks; say so instead of reporting images without masks.
  lossy = [name for name in list_files(mask_dir, IMAGE_SUFFIXES)
           if not name.lower().endswith(MASK_SUFFIXES) and
           stem(name)[:len(stem(name)) - len(mask_suffix)] in no_mask]
  if lossy:
    raise ValueError(
        f'{mask_dir} holds masks that are not PNG (e.g. {lossy[:3]}). Masks '
        'must be PNG: lossless, one class index per pixel (a JPEG invents '
        'values along every edge). Fix: save the masks as PNG, named '
        f'X{mask_suffix}.png for image X.')
  if no_mask or no_image:
    problems = []
    if no_mask:
      problems.append(f'{len(no_mask)} images in {image_dir} have no mask in '
                      f'{mask_dir} (e.g. {[images[k] for k in no_mask[:3]]})')
    if no_image:
      problems.append(f'{len(no_image)} masks in {mask_dir} have no image in '
                      f'{image_dir} (e.g. {[masks[k] for k in no_image[:3]]})')
    raise ValueError(
        f'{" and ".join(problems)}. Images and masks pair up by file name: '
        f'X.jpg (or .png, .jpeg, .bmp, .gif) with X{mask_suffix}.png. Fix: '
        f'give every image exactly one mask, or move the unpaired files '
        f'elsewhere.')
  if not images:
    found = sorted(os.listdir(image_dir))[:5]
    raise ValueError(
        f'No images ({", ".join(IMAGE_SUFFIXES)}) in {image_dir}; it holds '
        f'{found or "nothing"}.')
  return [(key, os.path.join(image_dir, images[key]),
           os.path.join(mask_dir, masks[key])) for key in sorted(images)]


def normalize_value_map(value_map: Optional[ValueMap]) -> tuple[
    tuple[int, int], ...]:
  """Sorted (mask value, label) pairs from a dict (int or numeric string keys,
  as configs hold them) or a sequence of pairs; () for None."""
  if value_map is None:
    return ()
  items = value_map.items() if isinstance(value_map, Mapping) else value_map
  pairs = []
  for item in items:
    try:
      value, label = item
      pairs.append((int(value), int(label)))
    except (TypeError, ValueError):
      raise ValueError(
          f'value_map entries must be (mask value, label) integers, got '
          f'{item!r}.') from None
  values = [value for value, _ in pairs]
  if len(set(values)) != len(values):
    raise ValueError(f'value_map lists a mask value twice: {sorted(values)}.')
  return tuple(sorted(pairs))


@dataclasses.dataclass(frozen=True)
class MaskCoding:
  """How the values in mask files become labels.

  Attributes:
    num_classes: Classes are 0..num_classes-1 (at most 255).
    ignore_index: Label of pixels that are not scored (outside the classes).
    value_map: (mask value, label) pairs. When empty, a mask value is its
      label; otherwise every value in a mask must be listed.
  """
  num_classes: int
  ignore_index: int = 255
  value_map: tuple[tuple[int, int], ...] = ()

  def __post_init__(self):
    if not 1 <= self.num_classes <= STORED_IGNORE:
      raise ValueError(f'num_classes must be in 1..{STORED_IGNORE}, got '
                       f'{self.num_classes}.')
    if 0 <= self.ignore_index < self.num_classes:
      raise ValueError(
          f'ignore_index {self.ignore_index} is one of the classes '
          f'0..{self.num_classes - 1}. Fix: choose a value outside them (255 '
          f'is usual), and map the mask value of ignored pixels to it with '
          f'value_map if it differs.')
    for value, label in self.value_map:
      if not self.is_label(label):
        raise ValueError(
            f'value_map sends mask value {value} to {label}, which is neither '
            f'a class (0..{self.num_classes - 1}) nor ignore_index '
            f'({self.ignore_index}).')

  def is_label(self, label: int) -> bool:
    return 0 <= label < self.num_classes or label == self.ignore_index

  def describe(self) -> str:
    if self.value_map:
      return f'listed in value_map {dict(self.value_map)}'
    return (f'a class (0..{self.num_classes - 1}) or ignore_index '
            f'({self.ignore_index})')

  def encode(self, mask: np.ndarray, mask_path: str) -> np.ndarray:
    """Mask values [H, W] -> stored labels uint8 [H, W] (255 = ignored).

    Raises:
      ValueError: Naming `mask_path` and the values, if a value is unknown.
    """
    values, inverse = np.unique(mask, return_inverse=True)
    if self.value_map:
      mapping = dict(self.value_map)
      bad = [int(v) for v in values if int(v) not in mapping]
      labels = np.array([mapping.get(int(v), 0) for v in values], np.int64)
    else:
      labels = values.astype(np.int64)
      bad = [int(v) for v in values if not self.is_label(int(v))]
    if bad:
      raise ValueError(
          f'{mask_path}: mask values {bad[:20]} are not {self.describe()}; '
          f'values found: {values.tolist()[:40]}. Fix: correct the mask, or '
          f'set class_names/ignore_index/value_map to match how the masks are '
          f'coded.')
    stored = np.where(labels == self.ignore_index, STORED_IGNORE, labels)
    return stored.astype(np.uint8)[inverse].reshape(mask.shape)


def _decode_error(path: str, error: Exception) -> ValueError:
  message = getattr(error, 'message', str(error))
  return ValueError(f'Cannot decode {path}: {message}. Fix: replace the file, '
                    f'or move it out of the folder.')


def read_image(path: str) -> tuple[bytes, tuple[int, int]]:
  """An image file as encoded RGB bytes and its (height, width).

  RGB PNG and JPEG files are kept as they are; greyscale, alpha, 16-bit,
  BMP and GIF images are converted to 8-bit RGB PNG.
  """
  data = tf.io.read_file(path)
  try:
    image = tf.io.decode_image(data, expand_animations=False)
  except tf.errors.InvalidArgumentError as e:
    raise _decode_error(path, e) from None
  raw = data.numpy()
  channels = image.shape[-1]
  if channels == 3 and (raw.startswith(_JPEG_SIGNATURE) or (
      raw.startswith(_PNG_SIGNATURE) and raw[24] == 8)):
    return raw, tuple(image.shape[:2])
  rgb = image[..., :3] if channels >= 3 else tf.image.grayscale_to_rgb(
      image[..., :1])
  return tf.io.encode_png(rgb).numpy(), tuple(image.shape[:2])


def _decode_mask(path: str) -> np.ndarray:
  """The pixels of a PNG file as Pillow gives them: [H, W] or [H, W, C]."""
  try:
    with Image.open(path, formats=['PNG']) as image:
      return np.asarray(image)
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise _decode_error(path, e) from None


def read_mask(path: str) -> np.ndarray:
  """The values [H, W] (uint8 or uint16) of a PNG mask file.

  Raises:
    ValueError: Naming the file, if it is not a PNG, cannot be decoded, is
      a colour image (channels differ), which holds colours, not values, or
      has 16-bit channels beside the grey (which Pillow cuts to 8 bits).
  """
  with open(path, 'rb') as f:
    header = f.read(26)  # Signature and IHDR up to the colour type.
  if not header.startswith(_PNG_SIGNATURE) or len(header) < 26:
    raise ValueError(
        f'{path} is not a PNG file. Masks must be lossless PNGs of class '
        f'values (JPEG adds wrong values along every edge). Fix: save the '
        f'masks as PNG.')
  bit_depth, colour_type = header[24], header[25]
  if bit_depth == 16 and colour_type != _GREY:
    raise ValueError(
        f'{path} is a 16-bit PNG with colour or alpha channels, whose values '
        f'cannot be read exactly (Pillow keeps 8 of the 16 bits). Fix: save '
        f'the masks as one-channel (8- or 16-bit greyscale) or palette PNGs.')
  mask = _decode_mask(path)
  if colour_type == _PALETTE:
    return mask  # The palette index is the value.
  if mask.dtype == bool:  # 1-bit greyscale: already 0 and 1.
    return mask.astype(np.uint8)
  if colour_type in (_RGB, _RGBA):
    rgb = mask[..., :3]
    if not ((rgb[..., 0] == rgb[..., 1]).all() and
            (rgb[..., 0] == rgb[..., 2]).all()):
      colours = np.unique(rgb.reshape(-1, 3), axis=0)
      raise ValueError(
          f'{path} is a colour mask ({len(colours)} colours, e.g. '
          f'{colours[:4].tolist()}); kdseg needs one value per class. Fix: '
          f'convert each colour to its class index and save one-channel (or '
          f'palette) PNGs.')
  if mask.ndim == 3:
    mask = mask[..., 0]
  if bit_depth == 16:
    return mask.astype(np.uint16)  # Older Pillow gives 16-bit grey as int32.
  if colour_type == _GREY and bit_depth < 8:
    # Pillow scales 2- and 4-bit values up to 0..255; undo that.
    mask = mask // (255 // (2**bit_depth - 1))
  return mask


def read_checked_pair(image_path: str, mask_path: str,
                      coding: MaskCoding) -> tuple[bytes, bytes]:
  """(encoded RGB image, one-channel label PNG) of a checked pair.

  Raises:
    ValueError: Naming the file, if either cannot be read, their sizes
      differ, or the mask holds values that `coding` does not know.
  """
  image, (height, width) = read_image(image_path)
  mask = read_mask(mask_path)
  if mask.shape != (height, width):
    raise ValueError(
        f'{image_path} is {width}x{height} (WxH) but its mask {mask_path} is '
        f'{mask.shape[1]}x{mask.shape[0]}. Fix: pair each image with its own '
        f'mask (same file name, same size), or resize both alike.')
  stored = coding.encode(mask, mask_path)
  return image, tf.io.encode_png(stored[..., None]).numpy()
