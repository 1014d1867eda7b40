"""Data: click-log loaders, per-user sequences, model inputs, partitions, catalogue, item text."""
