"""Checkpoints: the weights.toml manifest, resolution (bundled -> cache -> hub), safe loading."""
