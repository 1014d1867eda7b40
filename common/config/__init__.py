"""Checks shared by the configuration dataclasses (model, training, run config)."""
