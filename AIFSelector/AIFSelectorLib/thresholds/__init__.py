"""Stage 5, the decision: core and penumbra by thresholds, islands, volumes and mismatch."""
