"""Shared core of fedseqrec: data, features, models, evaluation and privacy accounting."""
