"""Flower ClientApp of fedseqrec."""
