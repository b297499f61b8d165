"""What every training entry point shares: writing checkpoints and manifest entries."""
