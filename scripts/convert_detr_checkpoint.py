"""Official DETR or Deformable DETR `.pth` (or HF transformers' DETR / DeformableDetr, or a
torchvision ResNet) -> our `.npz`.

  python scripts/convert_detr_checkpoint.py detr-r50-e632da11.pth detr-r50.npz
  python scripts/convert_detr_checkpoint.py detr-r50-panoptic-00ce5173.pth detr-r50-panoptic.npz
  python scripts/convert_detr_checkpoint.py r50_deformable_detr-checkpoint.pth ddetr-r50.npz

The `.pth` is opened with torch.load(weights_only=True): a file that carries code is refused.
Use the result (or the `.pth` itself) with --config.init_from=PATH. The `.npz` keeps one entry per
transformer layer, as the `.pth`; a model with `--config.model.scan=True` stacks them on loading.
"""

import argparse
import sys

# torch before TensorFlow (imported by the packages): see tests/conftest.py.
import torch  # noqa: F401
import torch._dynamo  # noqa: F401
import jax
import numpy as np

from detr_jax import deformable_pretrained, pretrained
from vit_jax.framework import weights
from vit_jax.framework.errors import UserError


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('checkpoint', help='.pth file (official DETR, panoptic DETR or Deformable '
                      'DETR, their HF versions, or torchvision ResNet)')
  parser.add_argument('output', help='.npz file to write')
  parser.add_argument('--num_heads', type=int, default=8, help='attention heads (8 in DETR)')
  args = parser.parse_args()
  try:
    state = weights.read_pth(args.checkpoint)
    deformable = deformable_pretrained.is_deformable(state)
    variables = (deformable_pretrained if deformable else pretrained).convert_state_dict(
        state, args.num_heads)
  except UserError as e:
    sys.exit(f'error: {e}')
  weights.write_npz(args.output, variables)
  count = lambda tree: sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(tree))
  params = variables['params']
  box_model = params.get('detr', params)  # A panoptic model keeps it under 'detr'.
  head = box_model.get('class_embed', box_model.get('class_embed_0', {}))
  classes = head.get('bias')
  if classes is None:
    what = ' (backbone only)'
  elif deformable:
    what = f', Deformable DETR with {len(classes)} sigmoid classes'
  else:
    what = f', {len(classes) - 1} classes + no-object'
  print(f'wrote {args.output}: {count(params):,} parameters, '
        f'{count(variables.get("frozen", {})):,} frozen batch-norm values' + what
        + (', panoptic mask head' if 'mask_head' in params else ''))


if __name__ == '__main__':
  main()
