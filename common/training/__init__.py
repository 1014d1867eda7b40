"""Training: centralized, a client's local run, cohorts of users, exact clipping, DP-SGD."""
