"""SEAN (Liang et al., MICCAI 2021) on a non-contrast CT."""
