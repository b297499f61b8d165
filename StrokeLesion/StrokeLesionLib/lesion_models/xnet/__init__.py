"""X-Net (Qi et al., MICCAI 2019) on a T1-weighted MRI."""
