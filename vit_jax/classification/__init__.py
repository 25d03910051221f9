"""Image classification: the task, its input, and its models (ViT and the ResNet hybrids)."""
