"""Parameters and multiply-adds of Segmenter models, and the published figures beside them.

Counted from shapes (jax.eval_shape) and XLA's cost analysis of the lowered forward pass, so no
weights are materialised. XLA counts a multiply-add as 2 flops; `gmacs` returns multiply-adds.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from segmenter_jax import models


def _images(size: int) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)


def parameter_count(model: models.Segmenter, size: int) -> int:
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                          _images(size))
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nn.meta.unbox(shapes['params']))))


def gmacs(model: models.Segmenter, size: int, upsampling: bool = True) -> float:
  """Giga multiply-adds of one forward pass on a size x size image (batch 1); without
  `upsampling`, up to the patch-level mask logits (what analytic counts usually cover)."""
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                             _images(size))
  method = None if upsampling else models.Segmenter.patch_logits
  forward = lambda v, x: model.apply(v, x, train=False, method=method)
  cost = jax.jit(forward).lower(variables, _images(size)).cost_analysis()
  return float(cost['flops']) / 2e9


def unused_head_count(model: models.Segmenter) -> int:
  """The official encoder's 1000-class ImageNet head(s), kept in its state dicts but unused."""
  heads = 2 if model.encoder.distilled else 1
  return heads * (1000 * model.encoder.hidden_size + 1000)


# Segmenter rows of the model table: ADE20K (150 classes), 512 x 512, mask transformer.
# paper_params: the authors' README model zoo (S and B there are rounded up: 27M / 106M against
# 26.42M / 103.27M in the released state dicts; L is listed at 640 px). published_gflops:
# 3rd-party measurement (a token-merging paper; reference/segmenter.md §4.2), FLOPs counted as
# 2 per multiply-add; the paper itself gives no GFLOPs.
TABLE = (
    dict(model='Seg-Ti-Mask/16', variant='Ti/16', paper_params=7e6, published_gflops=25.0),
    dict(model='Seg-S-Mask/16', variant='S/16', paper_params=27e6, published_gflops=None),
    dict(model='Seg-B-Mask/16', variant='B/16', paper_params=106e6, published_gflops=258.0),
    dict(model='Seg-L-Mask/16', variant='L/16', paper_params=334e6, published_gflops=800.0),
)
TABLE_SIZE, TABLE_CLASSES = 512, 150
SOURCE = ('params: README model zoo (L at 640 px); GFLOPs: 3rd-party, 2 FLOPs per multiply-add '
          '(reference/segmenter.md §4)')


def table_row(entry: dict) -> dict:
  model = models.build_segmenter(dict(variant=entry['variant'], image_size=TABLE_SIZE,
                                      num_classes=TABLE_CLASSES, decoder='mask_transformer'))
  params = parameter_count(model, TABLE_SIZE)
  return dict(model=entry['model'], params=params,
              params_with_unused_head=params + unused_head_count(model),
              paper_params=entry['paper_params'],
              gmacs_512=gmacs(model, TABLE_SIZE),
              gmacs_512_before_upsampling=gmacs(model, TABLE_SIZE, upsampling=False),
              published_gflops_512=entry['published_gflops'], source=SOURCE)
