"""Shared core of fedseqrec, one subpackage per concern.

- :mod:`common.data`: click logs, sequences, model inputs, partitions, catalogue, item text.
- :mod:`common.models`: the sequential recommenders and their shared interface.
- :mod:`common.training`: centralized, local, cohort and DP-SGD training; exact clipping.
- :mod:`common.evaluation`: full-ranking metrics, scoring, trivial baselines.
- :mod:`common.privacy`: accounting, ledger, audit, canaries, membership inference.
- :mod:`common.federation`: run config, messages, strategies, compression, secure
  aggregation, checkpoints.
- :mod:`common.storage`: run folders with atomic writes.
"""
