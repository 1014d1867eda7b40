"""Launching federated simulations and reporting their results."""
