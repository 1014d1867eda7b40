"""Benchmark scripts: each prints its figures and writes benchmarks/results/*.json."""
