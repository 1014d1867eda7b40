"""Logging of the Flower apps: our INFO lines once, Flower's once."""

from __future__ import annotations

import logging


def configure_app_logging(logger: logging.Logger) -> None:
    """Print ``logger``'s INFO lines once, and Flower's once.

    Importing Opacus runs ``logging.basicConfig`` (a root handler), so every Flower
    line would otherwise appear twice in the run log: stop both from propagating.
    """
    logging.getLogger("flwr").propagate = False
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
