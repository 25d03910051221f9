"""The offline detection dataset: generated scenes (vit_jax/framework/scenes.py) as boxes.

Colours are random and independent of the class, so only the shape tells the class. Each box is
exactly the tight box around its object's drawn pixels, `area` is their count, and objects keep
one background pixel clear of each other's boxes.
"""

import functools

import numpy as np

from vit_jax.framework import scenes
from vit_jax.framework.scenes import ShapesSettings  # The scenes' settings are this dataset's.

CATEGORIES = tuple({'id': kind + 1, 'name': name} for kind, name in enumerate(scenes.SHAPES))


@functools.lru_cache(maxsize=4)
def generate(settings: ShapesSettings, split: str) -> dict[str, np.ndarray]:
  """The split's images and annotations.

  Returns image uint8 [N, S, S, 3]; boxes float32 [N, max_objects, 4] absolute (x0, y0, x1, y1)
  pixel edges; category int32 [N, max_objects] (ids of CATEGORIES); area int32 (pixel counts);
  box_mask int32 [N, max_objects] (1 = real object, first).
  """
  n, size, slots = scenes.split_size(settings, split), settings.image_size, settings.max_objects
  out = {'image': np.zeros((n, size, size, 3), np.uint8),
         'boxes': np.zeros((n, slots, 4), np.float32),
         'category': np.zeros((n, slots), np.int32), 'area': np.zeros((n, slots), np.int32),
         'box_mask': np.zeros((n, slots), np.int32)}
  for i, scene in enumerate(scenes.scenes(settings, split, scenes.Drawing())):
    out['image'][i] = scene.image
    for slot, drawn in enumerate(scene.objects):
      out['boxes'][i, slot] = drawn.drawn_box
      out['category'][i, slot] = CATEGORIES[drawn.kind]['id']
      out['area'][i, slot] = drawn.mask.sum()
      out['box_mask'][i, slot] = 1
  return out
