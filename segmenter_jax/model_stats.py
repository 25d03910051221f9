"""Parameters and multiply-adds of Segmenter models, and the published figures beside them.

Counted from shapes with vit_jax.framework.model_stats (no weights are materialised), as multiply-adds.
"""

import jax
import jax.numpy as jnp

from segmenter_jax import models
from vit_jax.framework import model_stats


def _images(size: int) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)


def unused_head_count(model: models.Segmenter) -> int:
  """The official encoder's 1000-class ImageNet head(s), kept in its state dicts but unused."""
  heads = 2 if model.encoder.distilled else 1
  return heads * (1000 * model.encoder.hidden_size + 1000)


# Segmenter rows of the model table: ADE20K (150 classes), 512 x 512, mask transformer.
# paper_params: the rstrudel/segmenter README model zoo, column "# params" (S and B there are
# rounded up: 27M / 106M against 26.42M / 103.27M in the released state dicts; L is listed at
# 640 px). No GFLOPs are published: neither the paper (arXiv 2105.05633v3) nor the README gives
# any, so ours stand alone.
TABLE = (
    dict(model='Seg-Ti-Mask/16', variant='Ti/16', paper_params=7e6),
    dict(model='Seg-S-Mask/16', variant='S/16', paper_params=27e6),
    dict(model='Seg-B-Mask/16', variant='B/16', paper_params=106e6),
    dict(model='Seg-L-Mask/16', variant='L/16', paper_params=334e6),
)
TABLE_SIZE, TABLE_CLASSES = 512, 150
SOURCE = ('params: rstrudel/segmenter README model zoo, column "# params" (L at 640 px); '
          'GFLOPs: none published (paper and README give none)')


def table_row(entry: dict) -> dict:
  model = models.build_segmenter(dict(variant=entry['variant'], image_size=TABLE_SIZE,
                                      num_classes=TABLE_CLASSES, decoder='mask_transformer'))
  image = _images(TABLE_SIZE)
  variables = model_stats.variable_shapes(model, image, train=False)  # Traced once for all three.
  params = model_stats.parameter_count(model, variables=variables)
  return dict(model=entry['model'], params=params,
              params_with_unused_head=params + unused_head_count(model),
              paper_params=entry['paper_params'],
              gmacs_512=model_stats.gflops(model, image, variables=variables, train=False),
              # Up to the patch-level mask logits (what analytic counts usually cover).
              gmacs_512_before_upsampling=model_stats.gflops(
                  model, image, method=models.Segmenter.patch_logits, variables=variables,
                  train=False),
              source=SOURCE)
