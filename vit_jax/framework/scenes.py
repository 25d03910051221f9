"""Generated scenes: solid rectangles, ellipses and triangles on a noisy background.

The offline datasets of DETR (boxes) and Segmenter (label maps) are both drawn here. Every scene
is a pure function of (seed, split, settings); the split name is part of the seed, so train and
eval never share images. Objects never touch: at least one background pixel lies between the
footprints (see `Drawing.footprint`) of any two.

What differs between the tasks (colours, when a triangle's apex is drawn, the footprint) is a
`Drawing` the task hands in. The scene loop calls it in a fixed order, so each task's random
draws, and with them its data, are exactly what they were when its results were measured.
"""

import dataclasses
from typing import Iterator
import zlib

import numpy as np

from vit_jax.framework.errors import UserError

SHAPES = ('rectangle', 'ellipse', 'triangle')
# Smallest per-channel contrast between an object and the background colour.
_MIN_CONTRAST = 96
_PLACEMENT_TRIES = 100


@dataclasses.dataclass(frozen=True)
class ShapesSettings:
  """`config.input.shapes`, checked when made; the defaults are an easy task for a small DETR."""
  seed: int = 0
  num_train: int = 2048
  num_eval: int = 256
  image_size: int = 64
  min_objects: int = 1
  max_objects: int = 3  # Up to: an object that finds no free place after 100 tries is skipped.
  min_object_size: int = 16
  max_object_size: int = 32
  noise: int = 8  # Background pixels are its colour +- noise (uniform).

  def __post_init__(self):
    if not 1 <= self.min_objects <= self.max_objects:
      raise UserError(f'config.input.shapes needs 1 <= min_objects <= max_objects, got '
                      f'{self.min_objects} and {self.max_objects}')
    if not 2 <= self.min_object_size <= self.max_object_size <= self.image_size - 2:
      raise UserError(f'config.input.shapes needs 2 <= min_object_size <= max_object_size <= '
                      f'image_size - 2, got {self.min_object_size}, {self.max_object_size} and '
                      f'image_size {self.image_size}')

  @classmethod
  def from_config(cls, shapes_config) -> 'ShapesSettings':
    given = dict(shapes_config or {})
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = set(given) - set(names)
    if unknown:
      raise UserError(f'unknown config.input.shapes keys {sorted(unknown)}: use {names}')
    return cls(**given)


def split_size(settings: ShapesSettings, split: str) -> int:
  return settings.num_train if split == 'train' else settings.num_eval


@dataclasses.dataclass
class SceneObject:
  """One drawn object: the shape SHAPES[kind] filling the width x height box at (x, y)."""
  kind: int
  x: int
  y: int
  width: int
  height: int
  apex: float  # A triangle's apex: its x offset inside the box...
  apex_on_top: int  # ...on the top side (1) or the bottom one (0); the base is the other side.
  mask: np.ndarray  # Boolean [height, width]: the painted pixels.

  @property
  def box(self) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) pixel edges of the box the shape fills."""
    return self.x, self.y, self.x + self.width, self.y + self.height

  @property
  def drawn_box(self) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) tight around the painted pixels: a triangle's apex may cover no pixel
    centre, so this can be a row shorter than `box`."""
    ys, xs = np.nonzero(self.mask)
    return self.x + xs.min(), self.y + ys.min(), self.x + xs.max() + 1, self.y + ys.max() + 1


@dataclasses.dataclass
class Scene:
  image: np.ndarray  # uint8 [image_size, image_size, 3].
  objects: list[SceneObject]  # In drawing order.


class Drawing:
  """A task's part in drawing a scene; each method draws from the rng in its own way.

  These defaults: colours random and independent of the class, a triangle's apex drawn only for
  triangles, objects kept clear of each other's painted pixels.
  """

  def background(self, rng) -> np.ndarray:
    return rng.integers(0, 256, 3)

  def outline(self, rng, kind: int, width: int) -> tuple[float, int]:
    """(apex, apex_on_top) of a SceneObject of this kind and width."""
    return triangle_apex(rng, width) if SHAPES[kind] == 'triangle' else (0.0, 0)

  def colour(self, rng, kind: int, background: np.ndarray) -> np.ndarray:
    while True:
      colour = rng.integers(0, 256, 3)
      if np.abs(colour - background).max() >= _MIN_CONTRAST:
        return colour

  def footprint(self, drawn: SceneObject) -> tuple[int, int, int, int]:
    """The box that later objects keep one background pixel away from."""
    return drawn.drawn_box


def triangle_apex(rng, width: int) -> tuple[float, int]:
  """A triangle's apex anywhere on the top or the bottom side of a box this wide."""
  return float(rng.uniform(0, width)), int(rng.integers(2))


def scenes(settings: ShapesSettings, split: str, drawing: Drawing) -> Iterator[Scene]:
  """The split's split_size(settings, split) scenes, in order."""
  rng = np.random.default_rng([settings.seed, zlib.crc32(split.encode())])
  for _ in range(split_size(settings, split)):
    yield _draw_scene(rng, settings, drawing)


def _draw_scene(rng, s: ShapesSettings, drawing: Drawing) -> Scene:
  background = drawing.background(rng)
  noise = rng.integers(-s.noise, s.noise + 1, (s.image_size, s.image_size, 3))
  image = np.clip(background + noise, 0, 255)
  objects = []
  taken = []  # Footprints drawn so far, each grown by one pixel so objects never touch.
  for _ in range(rng.integers(s.min_objects, s.max_objects + 1)):
    kind = int(rng.integers(len(SHAPES)))
    place = _free_place(rng, s, taken)
    if place is None:
      continue
    x, y, w, h = place
    apex, apex_on_top = drawing.outline(rng, kind, w)
    drawn = SceneObject(kind, x, y, w, h, apex, apex_on_top,
                        _shape_mask(kind, w, h, apex, apex_on_top))
    image[y:y + h, x:x + w][drawn.mask] = drawing.colour(rng, kind, background)
    x0, y0, x1, y1 = drawing.footprint(drawn)
    taken.append((x0 - 1, y0 - 1, x1 + 1, y1 + 1))
    objects.append(drawn)
  return Scene(image.astype(np.uint8), objects)


def _free_place(rng, s: ShapesSettings, taken) -> tuple[int, int, int, int] | None:
  """(x, y, width, height) of a random box overlapping none of `taken`; None if none is found."""
  for _ in range(_PLACEMENT_TRIES):
    w, h = (int(v) for v in rng.integers(s.min_object_size, s.max_object_size + 1, 2))
    x, y = int(rng.integers(0, s.image_size - w + 1)), int(rng.integers(0, s.image_size - h + 1))
    if not any(x < bx1 and bx0 < x + w and y < by1 and by0 < y + h
               for bx0, by0, bx1, by1 in taken):
      return x, y, w, h
  return None


def _shape_mask(kind: int, w: int, h: int, apex: float, apex_on_top: int) -> np.ndarray:
  """Boolean [h, w]: pixels whose centre lies inside the shape filling the w x h box."""
  px = (np.arange(w) + 0.5)[None, :]
  py = (np.arange(h) + 0.5)[:, None]
  if SHAPES[kind] == 'rectangle':
    return np.ones((h, w), bool)
  if SHAPES[kind] == 'ellipse':  # Touching all four sides of the box.
    return ((px - w / 2) / (w / 2)) ** 2 + ((py - h / 2) / (h / 2)) ** 2 <= 1
  # Triangle: the base is one full side (bottom or top), the apex on the opposite one.
  depth = py / h if apex_on_top else 1 - py / h  # 0 at the apex, 1 at the base.
  return (px >= apex * (1 - depth)) & (px <= apex + (w - apex) * depth)
