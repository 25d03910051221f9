"""Vision Transformer in JAX/Flax: the shared core (train loop, sharding, input, checkpoints) and ViT."""

import os

# TensorFlow is only the input pipeline here; its C++ INFO lines (oneDNN, ...) are noise.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
# TF 2.21 prints "oneDNN custom operations are on" whatever the log level; its oneDNN kernels
# serve matmuls and convolutions, which the input pipeline does not run.
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
