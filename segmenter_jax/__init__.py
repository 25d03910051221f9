"""Segmenter (Strudel et al. 2021) as a task of the shared train loop in vit_jax."""
