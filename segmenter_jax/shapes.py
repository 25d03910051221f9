"""An offline segmentation dataset: rectangles, ellipses and triangles on a noisy background.

Every image and label map is a pure function of (seed, split, settings). Objects never touch (at
least one background pixel between their boxes), so every pixel belongs to exactly one shape or
to the background, and the label map is exactly the set of pixels painted in each object's
colour.

With `class_colours` (the default), each class also has its own hue (rectangles red, ellipses
green, triangles blue, +- 20 degrees, saturated) on a greyish background, so every patch of an
object says its class and a small model learns the task in minutes on a CPU. Without it colours
are random and independent of the class: only the shape tells the class, a much harder task
(the model has to look at a whole object, not at one patch of it).
"""

import colorsys
import dataclasses
import functools
import zlib

import numpy as np

from vit_jax.errors import UserError

CLASSES = ('background', 'rectangle', 'ellipse', 'triangle')
# Smallest per-channel contrast between an object and the background colour.
_MIN_CONTRAST = 96
# class_colours: each class's hue (degrees), drawn within +- _HUE_JITTER.
_CLASS_HUES = {1: 0.0, 2: 120.0, 3: 240.0}
_HUE_JITTER = 20.0
_PLACEMENT_TRIES = 100
# One row per drawn object (count: `num_objects`): what a test needs to redraw it independently.
OBJECT_FIELDS = ('label', 'x', 'y', 'width', 'height', 'apex', 'apex_on_top')


@dataclasses.dataclass(frozen=True)
class ShapesSettings:
  """`config.input.shapes`; the defaults are an easy task for a small Segmenter."""
  seed: int = 0
  num_train: int = 2048
  num_eval: int = 256
  image_size: int = 32
  min_objects: int = 1
  max_objects: int = 3  # Up to: an object that finds no free place after 100 tries is skipped.
  min_object_size: int = 12
  max_object_size: int = 20
  noise: int = 8  # Background pixels are its colour +- noise (uniform).
  class_colours: bool = True  # Each class its own hue; False: colours say nothing.

  @classmethod
  def from_config(cls, shapes_config) -> 'ShapesSettings':
    given = dict(shapes_config or {})
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = set(given) - set(names)
    if unknown:
      raise UserError(f'unknown config.input.shapes keys {sorted(unknown)}: use {names}')
    settings = cls(**given)
    _check(settings)
    return settings


def split_size(settings: ShapesSettings, split: str) -> int:
  return settings.num_train if split == 'train' else settings.num_eval


@functools.lru_cache(maxsize=4)
def generate(settings: ShapesSettings, split: str) -> dict[str, np.ndarray]:
  """The split's images and label maps.

  Returns image uint8 [N, S, S, 3]; label uint8 [N, S, S] (indices into CLASSES); objects
  float64 [N, max_objects, len(OBJECT_FIELDS)] and num_objects int32 [N], the drawn objects in
  drawing order (x, y: top-left corner of the object's box; apex: the triangle apex's x offset
  inside the box).
  """
  _check(settings)
  # The split name is part of the seed, so train and eval never share images.
  rng = np.random.default_rng([settings.seed, zlib.crc32(split.encode())])
  n, size = split_size(settings, split), settings.image_size
  out = {'image': np.zeros((n, size, size, 3), np.uint8),
         'label': np.zeros((n, size, size), np.uint8),
         'objects': np.zeros((n, settings.max_objects, len(OBJECT_FIELDS))),
         'num_objects': np.zeros((n,), np.int32)}
  for i in range(n):
    _draw_image(rng, settings, {k: v[i] for k, v in out.items()}, out['num_objects'], i)
  return out


def _check(s: ShapesSettings):
  if not 1 <= s.min_objects <= s.max_objects:
    raise UserError(f'config.input.shapes needs 1 <= min_objects <= max_objects, got '
                    f'{s.min_objects} and {s.max_objects}')
  if not 2 <= s.min_object_size <= s.max_object_size <= s.image_size - 2:
    raise UserError(f'config.input.shapes needs 2 <= min_object_size <= max_object_size <= '
                    f'image_size - 2, got {s.min_object_size}, {s.max_object_size} and '
                    f'image_size {s.image_size}')


def _draw_image(rng, s: ShapesSettings, out: dict[str, np.ndarray], counts, index):
  if s.class_colours:  # Greyish: saturation <= 0.25.
    background = _hsv(rng.uniform(0, 360), rng.uniform(0, 0.25), rng.uniform(0.2, 0.9))
  else:
    background = rng.integers(0, 256, 3)
  noise = rng.integers(-s.noise, s.noise + 1, (s.image_size, s.image_size, 3))
  image = np.clip(background + noise, 0, 255)
  taken = []  # Boxes drawn so far, each grown by one pixel so objects never touch.
  for _ in range(rng.integers(s.min_objects, s.max_objects + 1)):
    label = int(rng.integers(1, len(CLASSES)))
    for _ in range(_PLACEMENT_TRIES):
      w, h = (int(v) for v in rng.integers(s.min_object_size, s.max_object_size + 1, 2))
      x, y = int(rng.integers(0, s.image_size - w + 1)), int(rng.integers(0, s.image_size - h + 1))
      if not any(x < bx1 and bx0 < x + w and y < by1 and by0 < y + h
                 for bx0, by0, bx1, by1 in taken):
        break
    else:
      continue
    apex, apex_on_top = float(rng.uniform(0, w)), int(rng.integers(2))
    mask = shape_mask(label, w, h, apex, apex_on_top)
    if s.class_colours:  # Saturated, in the class's hue.
      colour = _hsv(_CLASS_HUES[label] + rng.uniform(-_HUE_JITTER, _HUE_JITTER),
                    rng.uniform(0.6, 1.0), rng.uniform(0.5, 1.0))
    else:
      colour = _contrasting_colour(rng, background)
    image[y:y + h, x:x + w][mask] = colour
    out['label'][y:y + h, x:x + w][mask] = label
    out['objects'][len(taken)] = (label, x, y, w, h, apex, apex_on_top)
    taken.append((x - 1, y - 1, x + w + 1, y + h + 1))
  counts[index] = len(taken)
  out['image'][...] = image


def shape_mask(label: int, w: int, h: int, apex: float, apex_on_top: int) -> np.ndarray:
  """Boolean [h, w]: pixels whose centre lies inside the shape filling the w x h box."""
  px = (np.arange(w) + 0.5)[None, :]
  py = (np.arange(h) + 0.5)[:, None]
  if CLASSES[label] == 'rectangle':
    return np.ones((h, w), bool)
  if CLASSES[label] == 'ellipse':  # Touching all four sides of the box.
    return ((px - w / 2) / (w / 2)) ** 2 + ((py - h / 2) / (h / 2)) ** 2 <= 1
  # Triangle: the base is one full side (bottom or top), the apex on the opposite one.
  depth = py / h if apex_on_top else 1 - py / h  # 0 at the apex, 1 at the base.
  return (px >= apex * (1 - depth)) & (px <= apex + (w - apex) * depth)


def _hsv(hue_degrees: float, saturation: float, value: float) -> np.ndarray:
  rgb = colorsys.hsv_to_rgb((hue_degrees / 360.0) % 1.0, saturation, value)
  return np.round(np.array(rgb) * 255).astype(np.int64)


def _contrasting_colour(rng, background: np.ndarray) -> np.ndarray:
  while True:
    colour = rng.integers(0, 256, 3)
    if np.abs(colour - background).max() >= _MIN_CONTRAST:
      return colour
