"""Data: pure generators (synthetic SEMs) and loaders, returning jax/numpy arrays."""
