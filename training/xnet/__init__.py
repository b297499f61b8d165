"""X-Net training and evaluation (Qi et al., MICCAI 2019)."""
