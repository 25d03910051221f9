"""Official Segmenter `checkpoint.pth` + `variant.yml` -> our params `.npz` and config `.json`.

  python scripts/convert_segmenter_checkpoint.py seg_base_mask/checkpoint.pth seg_base_mask.npz

variant.yml is read from beside checkpoint.pth unless --variant says where. The `.json` next to
the output holds the model config fields (for config.model), the input normalisation and the
original inference settings. The `.pth` is opened with torch.load(weights_only=True): a file
that carries code is refused. Use the `.npz` (or the `.pth`) with --config.init_from=PATH.
"""

import argparse
import json
import os
import sys

# torch before TensorFlow (imported by the packages): see tests/conftest.py.
import torch  # noqa: F401
import torch._dynamo  # noqa: F401
import jax
import numpy as np

from segmenter_jax import pretrained
from vit_jax.framework import paths, weights
from vit_jax.framework.errors import UserError


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('checkpoint', help='official checkpoint.pth')
  parser.add_argument('output', help='.npz file to write (the config goes beside it, .json)')
  parser.add_argument('--variant', help='variant.yml (default: beside the checkpoint)')
  args = parser.parse_args()
  try:
    state = weights.read_pth(args.checkpoint)
    variant = pretrained.read_variant_yml(
        args.variant or os.path.join(os.path.dirname(args.checkpoint), 'variant.yml'))
    params, fields = pretrained.convert_official(state, variant)
    normalization = pretrained.input_normalization(variant)
  except UserError as e:
    sys.exit(f'error: {e}')
  weights.write_npz(args.output, params)
  config_path = os.path.splitext(args.output)[0] + '.json'
  paths.write_text(config_path, json.dumps(dict(model=fields, normalization=normalization,
                                                inference=variant.get('inference_kwargs')),
                                           indent=1))
  count = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(params))
  unused = sorted(k for k in state if k in pretrained.UNUSED_OFFICIAL)
  print(f'wrote {args.output}: {count:,} parameters ({fields["decoder"]} decoder, '
        f'{fields["num_classes"]} classes, crop {fields["image_size"]}); '
        f'unused: {", ".join(unused)}')
  print(f'wrote {config_path}: config.model fields, normalisation, inference settings')


if __name__ == '__main__':
  main()
