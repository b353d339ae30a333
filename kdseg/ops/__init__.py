"""Low-level array operations shared by the models."""
