"""DETR panoptic segmentation on COCO 2017 panoptic, the paper's two-stage recipe (Carion et al.
2020, section 4.4; facebookresearch/detr with --masks --dataset_file coco_panoptic).

  python -m detr_jax.main --config=configs/detr_panoptic.py:r50,stage=boxes --workdir=BOXES
  python -m detr_jax.main --config=configs/detr_panoptic.py:r50,stage=masks --workdir=MASKS \
      --config.init_from=boxes.npz   # or a released detr-r50-panoptic-00ce5173.pth

boxes.npz: stage 1's variables, `vit_jax.framework.weights.write_npz('boxes.npz', {'params': s['params'],
**s['model_state']})` with `s = vit_jax.framework.checkpoint.load_state('BOXES')`.

The argument is BACKBONE[,stage=boxes|masks][,epochs=N]: r50, dc5_r50 or r101 (the released
panoptic models: PQ 43.4, 44.6, 45.1).
- stage=boxes: the box model on COCO panoptic with 250 classes (every segment, stuff and crowd
  too, is a box target), configs/detr_coco.py's recipe (epochs=500 or 300). The mask head is
  built but frozen and has no loss, so the eval's PQ means nothing until stage 2.
- stage=masks: the mask head alone for 25 epochs, lr x0.1 at epoch 15, the box model frozen
  (freeze_detr: no gradient reaches it; lr_mults 0: no update, no weight decay).

Expects TFDS coco/2017_panoptic (--config.input.data_dir=DIR) or a COCO panoptic folder:
--config.input.source=coco_panoptic_folder --config.input.data_dir=DIR
--config.input.train_split=train2017 --config.input.eval_split=val2017.
"""

import ml_collections

from vit_jax.framework import config_args

BACKBONES = ('r50', 'dc5_r50', 'r101')
STAGES = ('boxes', 'masks')
MASK_EPOCHS, MASK_LR_DROP = 25, 15


def get_config(arg='r50'):
  args = config_args.parse(arg, 'configs/detr_panoptic.py', names={'backbone': BACKBONES},
                           options={'stage': STAGES, 'epochs': 500})
  coco = config_args.import_beside(__file__, 'detr_coco')
  config = coco.get_config(f'{args.backbone},epochs={args.epochs}')
  config.task = 'panoptic'

  config.input.dataset = 'coco/2017_panoptic'
  config.input.max_boxes = 100  # Segments per image (COCO panoptic's most: under 100).
  config.input.gt_canvas = (640, 640)  # COCO images are at most 640 x 640.
  config.input.eval_batch_size = 8  # Eval hands 100 masks at stride 4 per image to the host.

  config.model.name = 'detr'
  config.model.num_classes = 250  # Category ids up to 200; the original's "large enough".
  config.model.freeze_detr = args.stage == 'masks'

  config.loss.mask_weight = 1.0 if args.stage == 'masks' else 0.0  # Focal.
  config.loss.dice_weight = 1.0 if args.stage == 'masks' else 0.0

  if args.stage == 'boxes':  # The detection recipe (the box model sits under 'detr/').
    config.optim.lr_mults = ((r'(bbox_attention|mask_head)/.*', 0.0),) + tuple(
        (f'detr/{regex}', mult) for regex, mult in config.optim.lr_mults)
  else:  # Only the mask head learns, at the base lr 1e-4.
    config.optim.lr_mults = ((r'detr/.*', 0.0),)
    config.optim.schedule.boundary_epochs = (MASK_LR_DROP,)
    config.total_epochs = MASK_EPOCHS
    config.eval_every_epochs = 5
  return config
