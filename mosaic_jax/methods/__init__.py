"""The training methods over `train.run`: MOSAIC and FATE."""
