"""SEAN training and evaluation (Liang et al., MICCAI 2021)."""
