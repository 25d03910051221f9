"""The offline segmentation dataset: generated scenes (vit_jax/framework/scenes.py) as label maps.

Objects never touch (at least one background pixel between their boxes), so every pixel belongs
to exactly one shape or to the background, and the label map is exactly the set of pixels
painted in each object's colour.

With `class_colours` (the default), each class also has its own hue (rectangles red, ellipses
green, triangles blue, +- 20 degrees, saturated) on a greyish background, so every patch of an
object says its class and a small model learns the task in minutes on a CPU. Without it colours
are random and independent of the class: only the shape tells the class, a much harder task
(the model has to look at a whole object, not at one patch of it).
"""

import colorsys
import dataclasses
import functools

import numpy as np

from vit_jax.framework import scenes
from vit_jax.framework.scenes import split_size

CLASSES = ('background',) + scenes.SHAPES
# class_colours: each class's hue (degrees), drawn within +- _HUE_JITTER.
_CLASS_HUES = {'rectangle': 0.0, 'ellipse': 120.0, 'triangle': 240.0}
_HUE_JITTER = 20.0
# One row per drawn object (count: `num_objects`): what a test needs to redraw it independently.
OBJECT_FIELDS = ('label', 'x', 'y', 'width', 'height', 'apex', 'apex_on_top')


@dataclasses.dataclass(frozen=True)
class ShapesSettings(scenes.ShapesSettings):
  """`config.input.shapes`; the defaults are an easy task for a small Segmenter."""
  image_size: int = 32
  min_object_size: int = 12
  max_object_size: int = 20
  class_colours: bool = True  # Each class its own hue; False: colours say nothing.


class _Drawing(scenes.Drawing):
  """Segmenter's scenes: every object draws an apex (used by triangles only) and keeps clear of
  the others' whole boxes; with class_colours, class hues on a greyish background."""

  def __init__(self, class_colours: bool):
    self.class_colours = class_colours

  def background(self, rng) -> np.ndarray:
    if not self.class_colours:
      return super().background(rng)
    return _hsv(rng.uniform(0, 360), rng.uniform(0, 0.25), rng.uniform(0.2, 0.9))  # Greyish.

  def outline(self, rng, kind: int, width: int) -> tuple[float, int]:
    return scenes.triangle_apex(rng, width)

  def colour(self, rng, kind: int, background: np.ndarray) -> np.ndarray:
    if not self.class_colours:
      return super().colour(rng, kind, background)
    return _hsv(_CLASS_HUES[scenes.SHAPES[kind]] + rng.uniform(-_HUE_JITTER, _HUE_JITTER),
                rng.uniform(0.6, 1.0), rng.uniform(0.5, 1.0))  # Saturated, in the class's hue.

  def footprint(self, drawn: scenes.SceneObject) -> tuple[int, int, int, int]:
    return drawn.box


@functools.lru_cache(maxsize=4)
def generate(settings: ShapesSettings, split: str) -> dict[str, np.ndarray]:
  """The split's images and label maps.

  Returns image uint8 [N, S, S, 3]; label uint8 [N, S, S] (indices into CLASSES); objects
  float64 [N, max_objects, len(OBJECT_FIELDS)] and num_objects int32 [N], the drawn objects in
  drawing order (x, y: top-left corner of the object's box; apex: the triangle apex's x offset
  inside the box).
  """
  n, size = split_size(settings, split), settings.image_size
  out = {'image': np.zeros((n, size, size, 3), np.uint8),
         'label': np.zeros((n, size, size), np.uint8),
         'objects': np.zeros((n, settings.max_objects, len(OBJECT_FIELDS))),
         'num_objects': np.zeros((n,), np.int32)}
  for i, scene in enumerate(scenes.scenes(settings, split, _Drawing(settings.class_colours))):
    out['image'][i] = scene.image
    out['num_objects'][i] = len(scene.objects)
    for slot, drawn in enumerate(scene.objects):
      label = CLASSES.index(scenes.SHAPES[drawn.kind])
      x, y, w, h = drawn.x, drawn.y, drawn.width, drawn.height
      out['label'][i, y:y + h, x:x + w][drawn.mask] = label
      out['objects'][i, slot] = (label, x, y, w, h, drawn.apex, drawn.apex_on_top)
  return out


def _hsv(hue_degrees: float, saturation: float, value: float) -> np.ndarray:
  rgb = colorsys.hsv_to_rgb((hue_degrees / 360.0) % 1.0, saturation, value)
  return np.round(np.array(rgb) * 255).astype(np.int64)
