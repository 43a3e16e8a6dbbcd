"""Pretraining recipes: TOML run configs (``xsky train <recipe>.toml``) and their finishing
steps."""
