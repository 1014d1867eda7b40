"""Storage: a run's folder on disk, written atomically."""
