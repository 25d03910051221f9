"""Swin Transformer as the detectors' backbone (`model.backbone='swin'`), as the Swin detection
repos use it: the four stage outputs at strides 4, 8, 16, 32 through fresh LayerNorms
norm0..norm3 (C, 2C, 4C, 8C channels), in the place of ResNet's layer1..layer4
(models.backbone_stages). DETR reads the last (and the panoptic head the first three);
Deformable DETR strides 8-32 and builds its stride-64 level on the last, as with ResNet.

Swin runs with the detection backbone's windows (`fixed_window`: every block keeps the
configured window, maps padded up to it, odd blocks always shifted), so its parameters do not
depend on the image size; its padded pixels are not masked (as the originals), the transformer
after it masks them as with ResNet. Its size is `backbone_variant` ('T', 'S', 'B', 'L'; 'B-384',
'L-384' for window 12) or, for small experiments, `backbone_width` (C), `backbone_blocks`
(depths) and `backbone_heads`, with `backbone_window` (default 7); `backbone_drop_path` is the
last block's stochastic depth (0.2 for Swin-T in the Swin detection configs). Its ImageNet
weights (official or timm `.pth`, init_from) load through `swin_weights.load_swin`.
"""

from vit_jax.classification import swin, swin_weights
from vit_jax.framework.errors import UserError
from vit_jax.framework.weights import Params


def swin_backbone(model, levels: tuple[int, ...]) -> swin.SwinTransformer:
  """The Swin feature extractor a DETR-family model's backbone_* fields describe."""
  if model.dilation:
    raise UserError('dilation (DC5) is a ResNet option: a Swin backbone keeps stride 32 '
                    '(set model.dilation=False)')
  if model.backbone_variant:
    size = swin.decode_variant(model.backbone_variant)
  elif model.backbone_blocks and model.backbone_heads:
    size = dict(embed_dim=model.backbone_width, depths=tuple(model.backbone_blocks),
                num_heads=tuple(model.backbone_heads), window_size=7)
  else:
    raise UserError('a Swin backbone needs model.backbone_variant (T, S, B, L, B-384, L-384) or '
                    'backbone_blocks, backbone_heads and backbone_width')
  if model.backbone_window:
    size['window_size'] = model.backbone_window
  return swin.SwinTransformer(
      num_classes=None, classifier='features', fixed_window=True, out_indices=tuple(levels),
      drop_path_rate=model.backbone_drop_path, dtype=model.dtype, name='backbone', **size)


def load_swin_backbone(variables, path: str):
  """`variables` with their backbone filled from a Swin classification checkpoint (official or
  timm `.pth`, or an `.npz` of ours): fresh stage norms, the classifier's norm and head left
  out, relative position tables resized to the backbone's window; the rest as it was."""
  params: Params = dict(variables['params'])
  params['backbone'] = swin_weights.load_swin(params['backbone'], path)
  return {**variables, 'params': params}
