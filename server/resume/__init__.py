"""Saving and restoring a run, in one place: a killed run carries on in its own folder.

- :mod:`~server.resume.state`: the server state saved after every round (``state/``);
- :mod:`~server.resume.keeper`: saves it after each round, skips done rounds on resume;
- :mod:`~server.resume.flower_optimizer`: the one place that reads (and writes back)
  the server optimizer's state inside Flower's strategies;
- :mod:`~server.resume.preflight`: what the launcher checks before any process starts
  (one writer, a loadable state and checkpoint, ledgers that account for every release);
- :mod:`~server.resume.restore`: the ServerApp's side, which checks again and restores;
- :mod:`~server.resume.stops`: why a run stopped (``stops.jsonl``), for ``summary.json``.
"""
