"""Rematerialisation policies by name (`model.remat`), for every model with repeated blocks."""

import jax

from vit_jax.framework.errors import UserError

# model.remat: what a block keeps for the backward pass, the rest recomputed (less memory,
# more compute); a policy of jax.checkpoint_policies by name.
REMAT_POLICIES = {
    'none': None,  # No rematerialisation: everything kept.
    'full': jax.checkpoint_policies.nothing_saveable,  # Only the block inputs kept.
    'nothing_saveable': jax.checkpoint_policies.nothing_saveable,
    'dots_saveable': jax.checkpoint_policies.dots_saveable,
    'dots_with_no_batch_dims_saveable': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    'everything_saveable': jax.checkpoint_policies.everything_saveable,
}


def remat_policy_name(remat) -> str:
  """model.remat, checked: a key of REMAT_POLICIES."""
  if not isinstance(remat, str) or remat not in REMAT_POLICIES:
    raise UserError(f'unknown model.remat {remat!r}: use one of {sorted(REMAT_POLICIES)}')
  return remat
