"""DeiT (Touvron et al. 2021): ViT trained on ImageNet-1k alone, optionally with a distillation token.

A DeiT model is our VisionTransformer with timm's numerics (reference/deit.md §1.4): exact erf
GELU, timm's initialisers (Linear kernels, tokens and position embeddings N(0, 0.02), biases 0,
PyTorch's patch-convolution default), LayerNorm eps 1e-6 and no pre-logits. `distilled` adds the
distillation token after the class token and its head `head_dist` (see VisionTransformer).
Sizes: `variant` Ti/16, S/16, B/16 (D 192 / 384 / 768, 3 / 6 / 12 heads, depth 12).
"""

from vit_jax.classification import vit

# Fields where DeiT differs from the original ViT; a model config may still override each.
DEIT_FIELDS = dict(classifier='token', gelu_approximate=False, weight_init='timm',
                   layer_norm_epsilon=1e-6)


def build_deit(model_config) -> vit.VisionTransformer:
  """The DeiT a model config describes (`variant`, `num_classes`, `distilled`, and any other
  VisionTransformer field, e.g. `drop_path_rate`)."""
  return vit.build_vit({**DEIT_FIELDS, **dict(model_config)})
