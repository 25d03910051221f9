"""DETR (Carion et al. 2020) as a task of the shared train loop in vit_jax."""
