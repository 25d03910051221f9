"""The offline panoptic dataset: generated scenes (vit_jax/framework/scenes.py) as things and stuff.

Stuff: the background is two bands, `sky` above a random horizon and `ground` below it, greyish
(light and dark). Things: the scene's rectangles, ellipses and triangles, each class in its own
saturated hue (red, green, blue, +- 20 degrees) so that a small model learns the classes in
minutes and spends its time on the masks. Objects never touch, so every object is one segment
and every pixel belongs to exactly one segment (no VOID, no crowd).
"""

import colorsys
import dataclasses
import functools
import zlib

import numpy as np

from vit_jax.framework import scenes

THINGS = scenes.SHAPES
STUFF = ('sky', 'ground')
# COCO panoptic's category fields; ids from 1, things first.
CATEGORIES = tuple({'id': i + 1, 'name': name, 'isthing': int(name in THINGS)}
                   for i, name in enumerate(THINGS + STUFF))
_THING_HUES = {'rectangle': 0.0, 'ellipse': 120.0, 'triangle': 240.0}
_HUE_JITTER = 20.0
_NOISE_SEED = 1  # The ground band's noise: a stream of its own beside the scene's.


@dataclasses.dataclass(frozen=True)
class ShapesSettings(scenes.ShapesSettings):
  """`config.input.shapes`; up to max_objects things plus the two stuff bands per image."""
  image_size: int = 64
  min_object_size: int = 12
  max_object_size: int = 28


class _Drawing(scenes.Drawing):
  """Draws the sky and ground colours and the horizon with the background; things in hues."""

  def __init__(self, image_size: int):
    self.image_size = image_size
    self.ground = self.horizon = None

  def background(self, rng) -> np.ndarray:
    sky = _hsv(rng.uniform(0, 360), rng.uniform(0, 0.2), rng.uniform(0.75, 1.0))
    self.ground = _hsv(rng.uniform(0, 360), rng.uniform(0, 0.2), rng.uniform(0.1, 0.4))
    self.horizon = int(rng.integers(self.image_size // 4, 3 * self.image_size // 4 + 1))
    return sky

  def colour(self, rng, kind: int, background: np.ndarray) -> np.ndarray:
    return _hsv(_THING_HUES[THINGS[kind]] + rng.uniform(-_HUE_JITTER, _HUE_JITTER),
                rng.uniform(0.7, 1.0), rng.uniform(0.55, 0.9))


def _hsv(hue_degrees: float, saturation: float, value: float) -> np.ndarray:
  rgb = colorsys.hsv_to_rgb((hue_degrees / 360.0) % 1.0, saturation, value)
  return np.round(np.array(rgb) * 255).astype(np.int64)


@functools.lru_cache(maxsize=4)
def generate(settings: ShapesSettings, split: str) -> dict[str, np.ndarray]:
  """The split's images and panoptic annotations.

  Returns image uint8 [N, S, S, 3]; panoptic int32 [N, S, S] (segment k at a pixel: the k-th
  slot, 1-based); category int32 [N, R] (ids of CATEGORIES) and segment_mask int32 [N, R]
  (1 = real slot, first), R = max_objects + 2: the things in drawing order, then sky, ground.
  """
  n, size, slots = scenes.split_size(settings, split), settings.image_size, settings.max_objects
  out = {'image': np.zeros((n, size, size, 3), np.uint8),
         'panoptic': np.zeros((n, size, size), np.int32),
         'category': np.zeros((n, slots + 2), np.int32),
         'segment_mask': np.zeros((n, slots + 2), np.int32)}
  drawing = _Drawing(size)
  noise_rng = np.random.default_rng([settings.seed, _NOISE_SEED, zlib.crc32(split.encode())])
  for i, scene in enumerate(scenes.scenes(settings, split, drawing)):
    ids = np.zeros((size, size), np.int32)
    for slot, drawn in enumerate(scene.objects):
      ids[drawn.y:drawn.y + drawn.height, drawn.x:drawn.x + drawn.width][drawn.mask] = slot + 1
      out['category'][i, slot] = drawn.kind + 1
    below = (np.arange(size)[:, None] >= drawing.horizon) & np.ones((1, size), bool)
    image = scene.image.astype(np.int64)
    ground = np.clip(drawing.ground + noise_rng.integers(-settings.noise, settings.noise + 1,
                                                         (size, size, 3)), 0, 255)
    image[below & (ids == 0)] = ground[below & (ids == 0)]
    things = len(scene.objects)
    for slot, (name, band) in enumerate(zip(STUFF, (~below, below)), things):
      ids[band & (ids == 0)] = slot + 1
      out['category'][i, slot] = len(THINGS) + STUFF.index(name) + 1
    out['image'][i], out['panoptic'][i] = image.astype(np.uint8), ids
    out['segment_mask'][i, :things + 2] = 1
  return out
