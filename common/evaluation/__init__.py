"""Evaluation: full-ranking metrics, scoring models and baselines on every user, baselines."""
