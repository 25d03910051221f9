"""DeiT (Touvron et al. 2021): ViT trained on ImageNet-1k alone, with an optional distillation
token.

A DeiT model is our VisionTransformer with timm's numerics (reference/deit.md §1.4): exact erf
GELU, timm's initialisers (Linear kernels, tokens and position embeddings N(0, 0.02), biases 0,
PyTorch's patch-convolution default), LayerNorm eps 1e-6 and no pre-logits. `distilled` adds the
distillation token after the class token and its head `head_dist` (see VisionTransformer).
Sizes: `variant` Ti/16, S/16, B/16 (D 192 / 384 / 768, 3 / 6 / 12 heads, depth 12).
"""

import dataclasses

from vit_jax.classification import vit

# Fields where DeiT differs from the original ViT; a model config may still override each.
DEIT_FIELDS = dict(classifier='token', gelu_approximate=False, weight_init='timm',
                   layer_norm_epsilon=1e-6)


def build_deit(model_config) -> vit.VisionTransformer:
  """The DeiT a model config describes (`variant`, `num_classes`, `distilled`, and any other
  VisionTransformer field, e.g. `drop_path_rate`)."""
  return vit.build_vit({**DEIT_FIELDS, **dict(model_config)})


@dataclasses.dataclass(frozen=True)
class Release:
  """A released DeiT model: how to build it, timm's name, the README's figures."""
  variant: str
  distilled: bool
  image_size: int
  timm_name: str
  readme_params: float  # The README's rounded count.
  readme_top1: float  # ImageNet top-1, DeiT's eval (resize to size / 0.875, centre crop).

  def model_config(self, num_classes: int = 1000) -> dict:
    return dict(name='deit', variant=self.variant, distilled=self.distilled,
                num_classes=num_classes)


# The DeiT README's eight models (reference/deit.md §1.6).
RELEASES = {
    'DeiT-Ti': Release('Ti/16', False, 224, 'deit_tiny_patch16_224', 5e6, 72.2),
    'DeiT-S': Release('S/16', False, 224, 'deit_small_patch16_224', 22e6, 79.9),
    'DeiT-B': Release('B/16', False, 224, 'deit_base_patch16_224', 86e6, 81.8),
    'DeiT-B-384': Release('B/16', False, 384, 'deit_base_patch16_384', 87e6, 82.9),
    'DeiT-Ti-distilled': Release('Ti/16', True, 224, 'deit_tiny_distilled_patch16_224', 6e6, 74.5),
    'DeiT-S-distilled': Release('S/16', True, 224, 'deit_small_distilled_patch16_224', 22e6, 81.2),
    'DeiT-B-distilled': Release('B/16', True, 224, 'deit_base_distilled_patch16_224', 87e6, 83.4),
    'DeiT-B-384-distilled': Release('B/16', True, 384, 'deit_base_distilled_patch16_384', 88e6,
                                    85.2),
}
