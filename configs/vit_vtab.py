"""VTAB-1k transfer, the ViT paper's protocol (Dosovitskiy et al. 2021, Appendix B.1.1; VTAB:
Zhai et al. 2019): 19 tasks, each 1000 training images (train800 + val200), the same recipe for
all of them: SGD momentum 0.9, batch 512, lr 0.01, 2500 steps, warmup then cosine, 384 px,
global-norm clip 1 (the rest as configs/vit_finetune.py).

  python -m vit_jax.main --config=configs/vit_vtab.py:l16,caltech101 --workdir=DIR

The argument is MODEL,TASK[,upstream=i21k|augreg] (MODEL as in vit_finetune.py). The run trains
on train800 + val200 and reports the task's test split; val200 is the held-out 'minival' eval.
Splits and labels follow google-research/task_adaptation's loaders (TFDS names and slices below;
labels not in TFDS's `label` feature come from vit_jax/classification/vtab.py). The paper's VTAB figure is the
mean test accuracy over the 19 tasks (scripts/reproduce.py vit-table2 averages the 19 runs).
Known gap: task_adaptation scales dSprites' 0/1 pixels to 0/255; this pipeline reads them as
stored.
"""

from vit_jax.framework import config_args

finetune = config_args.import_beside(__file__, 'vit_finetune')

# task -> (TFDS dataset, train800, val200, test split, classes, label rule in vit_jax/classification/vtab.py).
TASKS = {
    # Natural.
    'caltech101': ('caltech101', 'train[:800]', 'train[2754:2954]', 'test', 102, None),
    'cifar100': ('cifar100', 'train[:800]', 'train[45000:45200]', 'test', 100, None),
    'dtd': ('dtd', 'train[:800]', 'validation[:200]', 'test', 47, None),
    'oxford_flowers102': ('oxford_flowers102', 'train[:800]', 'validation[:200]', 'test', 102,
                          None),
    'oxford_iiit_pet': ('oxford_iiit_pet', 'train[:800]', 'train[2944:3144]', 'test', 37, None),
    'sun397': ('sun397/tfds', 'train[:800]', 'validation[:200]', 'test', 397, None),
    'svhn': ('svhn_cropped', 'train[:800]', 'train[65931:66131]', 'test', 10, None),
    # Specialized.
    'patch_camelyon': ('patch_camelyon', 'train[:800]', 'validation[:200]', 'test', 2, None),
    'eurosat': ('eurosat/rgb', 'train[:800]', 'train[16200:16400]', 'train[21600:]', 10, None),
    'resisc45': ('resisc45', 'train[:800]', 'train[18900:19100]', 'train[25200:]', 45, None),
    'diabetic_retinopathy': ('diabetic_retinopathy_detection/btgraham-300', 'train[:800]',
                             'validation[:200]', 'test', 5, None),
    # Structured.
    'clevr_count': ('clevr', 'train[:800]', 'train[63000:63200]', 'validation', 8,
                    'clevr_count'),
    'clevr_distance': ('clevr', 'train[:800]', 'train[63000:63200]', 'validation', 6,
                       'clevr_distance'),
    'dmlab': ('dmlab', 'train[:800]', 'validation[:200]', 'test', 6, None),
    'dsprites_location': ('dsprites', 'train[:800]', 'train[589824:590024]', 'train[663552:]',
                          16, 'dsprites_location'),
    'dsprites_orientation': ('dsprites', 'train[:800]', 'train[589824:590024]',
                             'train[663552:]', 16, 'dsprites_orientation'),
    'kitti_distance': ('kitti', 'train[:800]', 'validation[:200]', 'test', 4, 'kitti_distance'),
    'smallnorb_azimuth': ('smallnorb', 'train[:800]', 'test[:200]', 'test[50%:]', 18,
                          'smallnorb_azimuth'),
    'smallnorb_elevation': ('smallnorb', 'train[:800]', 'test[:200]', 'test[50%:]', 9,
                            'smallnorb_elevation'),
}


def get_config(arg='b16,cifar100'):
  args = config_args.parse(arg, 'configs/vit_vtab.py',
                           names={'model': finetune.MODELS, 'task': TASKS},
                           options={'upstream': ('i21k', 'augreg')})
  dataset, train800, val200, test, classes, label = TASKS[args.task]
  config = finetune.get_config(f'{args.model},cifar100,upstream={args.upstream}')
  config.input.dataset = dataset
  config.input.train_split = f'{train800}+{val200}'  # train800val200: the final runs' data.
  config.input.eval_split = test
  config.input.label = label  # None: TFDS's `label` feature.
  config.input.shuffle_buffer = 1000
  config.model.num_classes = classes
  config.optim.lr = 0.01
  config.optim.schedule.warmup_steps = 500
  config.total_steps = 2500
  config.eval_every = 500
  config.checkpoint_every = 500
  config.evals = (('minival', val200),)
  return config
