"""An offline detection dataset: solid rectangles, ellipses and triangles on a noisy background.

Every image and box is a pure function of (seed, split, settings). Objects never touch (at least
one background pixel between their boxes), so each box is exactly the tight box around its own
drawn pixels, and `area` is its pixel count. Colours are random and independent of the class, so
only the shape tells the class.
"""

import dataclasses
import functools
import zlib

import numpy as np

from vit_jax.errors import UserError

CATEGORIES = ({'id': 1, 'name': 'rectangle'}, {'id': 2, 'name': 'ellipse'},
              {'id': 3, 'name': 'triangle'})
# Smallest per-channel contrast between an object and the background colour.
_MIN_CONTRAST = 96
_PLACEMENT_TRIES = 100


@dataclasses.dataclass(frozen=True)
class ShapesSettings:
  """`config.input.shapes`; the defaults are an easy task for a small DETR."""
  seed: int = 0
  num_train: int = 2048
  num_eval: int = 256
  image_size: int = 64
  min_objects: int = 1
  max_objects: int = 3  # Up to: an object that finds no free place after 100 tries is skipped.
  min_object_size: int = 16
  max_object_size: int = 32
  noise: int = 8  # Background pixels are its colour +- noise (uniform).

  @classmethod
  def from_config(cls, shapes_config) -> 'ShapesSettings':
    given = dict(shapes_config or {})
    unknown = set(given) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise UserError(f'unknown config.input.shapes keys {sorted(unknown)}: use '
                      f'{[f.name for f in dataclasses.fields(cls)]}')
    return cls(**given)


def split_size(settings: ShapesSettings, split: str) -> int:
  return settings.num_train if split == 'train' else settings.num_eval


@functools.lru_cache(maxsize=4)
def generate(settings: ShapesSettings, split: str) -> dict[str, np.ndarray]:
  """The split's images and annotations.

  Returns image uint8 [N, S, S, 3]; boxes float32 [N, max_objects, 4] absolute (x0, y0, x1, y1)
  pixel edges; category int32 [N, max_objects] (ids of CATEGORIES); area int32 (pixel counts);
  box_mask int32 [N, max_objects] (1 = real object, first).
  """
  _check(settings)
  # The split name is part of the seed, so train and eval never share images.
  rng = np.random.default_rng([settings.seed, zlib.crc32(split.encode())])
  n, size, slots = split_size(settings, split), settings.image_size, settings.max_objects
  out = {'image': np.zeros((n, size, size, 3), np.uint8),
         'boxes': np.zeros((n, slots, 4), np.float32),
         'category': np.zeros((n, slots), np.int32), 'area': np.zeros((n, slots), np.int32),
         'box_mask': np.zeros((n, slots), np.int32)}
  for i in range(n):
    _draw_image(rng, settings, {k: v[i] for k, v in out.items()})
  return out


def _check(settings: ShapesSettings):
  s = settings
  if not 1 <= s.min_objects <= s.max_objects:
    raise UserError(f'config.input.shapes needs 1 <= min_objects <= max_objects, got '
                    f'{s.min_objects} and {s.max_objects}')
  if not 2 <= s.min_object_size <= s.max_object_size <= s.image_size - 2:
    raise UserError(f'config.input.shapes needs 2 <= min_object_size <= max_object_size <= '
                    f'image_size - 2, got {s.min_object_size}, {s.max_object_size} and '
                    f'image_size {s.image_size}')


def _draw_image(rng, s: ShapesSettings, out: dict[str, np.ndarray]):
  background = rng.integers(0, 256, 3)
  noise = rng.integers(-s.noise, s.noise + 1, (s.image_size, s.image_size, 3))
  image = np.clip(background + noise, 0, 255)
  taken = []  # Boxes drawn so far, each grown by one pixel so objects never touch.
  for _ in range(rng.integers(s.min_objects, s.max_objects + 1)):
    category = int(rng.integers(len(CATEGORIES)))
    for _ in range(_PLACEMENT_TRIES):
      w, h = rng.integers(s.min_object_size, s.max_object_size + 1, 2)
      x, y = rng.integers(0, s.image_size - w + 1), rng.integers(0, s.image_size - h + 1)
      if not any(x < bx1 and bx0 < x + w and y < by1 and by0 < y + h
                 for bx0, by0, bx1, by1 in taken):
        break
    else:
      continue
    mask = _shape_mask(rng, category, w, h)
    ys, xs = np.nonzero(mask)
    # Tight box around the drawn pixels (a triangle's apex may not cover a pixel centre).
    x0, y0, x1, y1 = x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1
    image[y:y + h, x:x + w][mask] = _contrasting_colour(rng, background)
    slot = len(taken)
    taken.append((x0 - 1, y0 - 1, x1 + 1, y1 + 1))
    out['boxes'][slot] = (x0, y0, x1, y1)
    out['category'][slot] = CATEGORIES[category]['id']
    out['area'][slot] = mask.sum()
    out['box_mask'][slot] = 1
  out['image'][...] = image


def _shape_mask(rng, category: int, w: int, h: int) -> np.ndarray:
  """Boolean [h, w]: pixels whose centre lies inside the shape filling the w x h box."""
  px = (np.arange(w) + 0.5)[None, :]
  py = (np.arange(h) + 0.5)[:, None]
  if category == 0:  # Rectangle.
    return np.ones((h, w), bool)
  if category == 1:  # Ellipse touching all four sides.
    return ((px - w / 2) / (w / 2)) ** 2 + ((py - h / 2) / (h / 2)) ** 2 <= 1
  # Triangle: the base is one full side (bottom or top), the apex anywhere on the opposite one.
  apex = rng.uniform(0, w)
  depth = py / h if rng.integers(2) else 1 - py / h  # 0 at the apex, 1 at the base.
  return (px >= apex * (1 - depth)) & (px <= apex + (w - apex) * depth)


def _contrasting_colour(rng, background: np.ndarray) -> np.ndarray:
  while True:
    colour = rng.integers(0, 256, 3)
    if np.abs(colour - background).max() >= _MIN_CONTRAST:
      return colour
