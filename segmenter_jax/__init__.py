"""Segmenter (Strudel et al. 2021) as a task of the shared train loop in vit_jax."""

import vit_jax  # noqa: F401  First: it sets TensorFlow's logging before anything loads TensorFlow.
