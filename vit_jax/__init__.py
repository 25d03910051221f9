"""Vision Transformer in JAX/Flax: the shared core (train loop, sharding, input, checkpoints) and ViT."""

import os

# TensorFlow is only the input pipeline here; its C++ INFO lines (oneDNN, ...) are noise.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
