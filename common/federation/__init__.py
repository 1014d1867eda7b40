"""Federation: run config, messages, strategies, compression, SecAgg+, checkpoints."""
