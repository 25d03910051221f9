"""The layers the models share: attention, LayerNorm, activations, convolutions, remat policies,
initialisers and position-embedding resampling."""
