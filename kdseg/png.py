"""PNG encoding of uint8 arrays with NumPy and zlib only.

Pictures (prediction panels, confusion matrices) are written without an
imaging library: a PNG is a signature and three chunks (header, compressed
rows, end), each with a CRC-32.
"""

import struct
import zlib

import numpy as np

_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# PNG colour types by channel count: greyscale, RGB, RGBA.
_COLOUR_TYPES = {1: 0, 3: 2, 4: 6}


def _chunk(kind: bytes, data: bytes) -> bytes:
  crc = zlib.crc32(kind + data) & 0xFFFFFFFF
  return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', crc)


def encode_png(image: np.ndarray, *, level: int = 6) -> bytes:
  """Encodes uint8 [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] as PNG bytes.

  Args:
    image: 8-bit pixels (greyscale, RGB or RGBA).
    level: zlib compression level, 0 (none) to 9 (smallest).

  Returns:
    The bytes of a PNG file (8 bits per channel, no interlacing).
  """
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f'PNG pixels must be uint8; got {image.dtype}.')
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[2] not in _COLOUR_TYPES:
    raise ValueError('Expected [H, W], [H, W, 1], [H, W, 3] or [H, W, 4]; got '
                     f'{image.shape}.')
  height, width, channels = image.shape
  if height < 1 or width < 1:
    raise ValueError(f'Empty image {image.shape}.')
  header = struct.pack('>IIBBBBB', width, height, 8,
                       _COLOUR_TYPES[channels], 0, 0, 0)
  # Every row starts with its filter type; 0 (none) keeps the encoder trivial.
  rows = np.concatenate(
      [np.zeros((height, 1), np.uint8), image.reshape(height, -1)], axis=1)
  data = zlib.compress(rows.tobytes(), level)
  return (_SIGNATURE + _chunk(b'IHDR', header) + _chunk(b'IDAT', data) +
          _chunk(b'IEND', b''))


def write_png(path: str, image: np.ndarray) -> str:
  """Writes `image` (see `encode_png`) to `path`; returns `path`."""
  with open(path, 'wb') as f:
    f.write(encode_png(image))
  return path
