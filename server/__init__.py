"""Flower ServerApp of fedseqrec."""
