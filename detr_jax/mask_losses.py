"""DETR's mask losses (the original's SetCriterion.loss_masks, `models/segmentation.py`):
sigmoid focal loss (alpha 0.25, gamma 2) and DICE loss between each matched query's mask and
its target's mask, summed over matched pairs and divided by the number of target boxes.

As the original: the predicted masks (stride 4) are upsampled bilinearly (align_corners=False)
to the target masks' size, the padded (batch) size; the focal loss is the mean over all those
pixels, padding included; only the last decoder layer's masks are used (none in the
auxiliary losses). The original pads targets to the largest image of each batch; with fixed
shapes they are padded to the fixed image size, so the padding share of the focal mean follows
that size (the dataset decides it).
"""

import jax
import jax.numpy as jnp
import optax


def upsample_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """[..., h, w] -> [..., H, W] as torch's interpolate(mode='bilinear', align_corners=False):
  samples at pixel centres, edges clamped, no antialiasing."""
  return jax.image.resize(x, x.shape[:-2] + tuple(size), 'bilinear', antialias=False)


def sigmoid_focal_loss(logits, targets, alpha: float = 0.25, gamma: float = 2.):
  """RetinaNet's focal loss per mask: [N, P] logits and {0, 1} targets -> [N], the mean over
  the P pixels of alpha_t (1 - p_t)^gamma BCE."""
  return optax.sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma).mean(-1)


def dice_loss(logits, targets):
  """[N, P] logits and {0, 1} targets -> [N]: 1 - (2 |p t| + 1) / (|p| + |t| + 1), p the
  sigmoid. optax's smoothing s gives 1 - (2 |p t| + 2 s) / (|p| + |t| + 2 s): the original's +1
  is s = 0.5."""
  return optax.losses.binary_dice_loss(logits, targets, smooth=0.5)


def mask_loss(pred_masks, target_masks, target_mask, target_query, *, num_boxes,
              mask_weight: float = 1., dice_weight: float = 1.):
  """The focal and DICE losses of the matched masks, normalised by the box count.

  Args:
    pred_masks: [B, Q, h, w] mask logits (`DETRPanoptic`'s 'masks').
    target_masks: [B, T, H, W] binary masks of the target slots, zero in the image padding.
    target_mask: [B, T], nonzero on real targets.
    target_query: [B, T] the query matched to each slot, -1 if none: the last decoder layer's
      row of `matcher.hungarian_match` (`target_query[-1]`).
    num_boxes: the global batch's real target count (`losses.loss_normalizers(...)['boxes']`);
      clamped to at least 1 as the original.
    mask_weight, dice_weight: the weights of the two terms (the original's --mask_loss_coef
      and --dice_loss_coef, both 1).

  Returns:
    (total, metrics): mask_weight * loss_mask + dice_weight * loss_dice, and the unweighted
    {'loss_mask': focal, 'loss_dice': dice}, this batch's shares of the global batch's values.
  """
  matched = target_mask.astype(bool) & (target_query >= 0)  # [B, T]
  # Upsample only the matched queries' masks: T of them per image, not Q.
  masks = jnp.take_along_axis(pred_masks.astype(jnp.float32),
                              jnp.maximum(target_query, 0)[..., None, None], axis=1)
  masks = upsample_bilinear(masks, target_masks.shape[-2:])
  flat = lambda x: x.reshape((matched.size, -1))  # [B * T, H * W]
  logits, targets = flat(masks), flat(target_masks.astype(jnp.float32))
  count = jnp.maximum(num_boxes, 1)
  matched = matched.reshape(-1)
  focal = jnp.where(matched, sigmoid_focal_loss(logits, targets), 0.).sum() / count
  dice = jnp.where(matched, dice_loss(logits, targets), 0.).sum() / count
  return mask_weight * focal + dice_weight * dice, {'loss_mask': focal, 'loss_dice': dice}
