"""Privacy: accounting, the ledger and its audit, canaries and membership inference."""
