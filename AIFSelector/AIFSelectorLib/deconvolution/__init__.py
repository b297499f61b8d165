"""Stage 3, deconvolution of tissue curves by the AIF (oSVD, cSVD, Tikhonov)."""
