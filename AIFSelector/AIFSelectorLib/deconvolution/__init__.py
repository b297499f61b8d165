"""Stage 3, deconvolution of tissue curves by the AIF: the SVD family (methods: oSVD, cSVD, Tikhonov) and the
Bayesian posterior (bayes)."""
MAP_METHODS = ("osvd", "csvd", "tikhonov", "bayes")
"""Every method of the maps (maps.compute), as the command line, the modules and the web app offer them."""
UNCERTAINTY_NAMES = ("cbf_sd", "tmax_sd")
"""Posterior SDs of CBF [ml/100 g/min] and Tmax [s]: the maps 'bayes' adds to the others."""
