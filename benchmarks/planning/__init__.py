"""Developer tooling: the training plan, its ledger runner and its staging (not part of the package)."""
