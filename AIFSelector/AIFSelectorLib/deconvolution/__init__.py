"""Stage 3, deconvolution of tissue curves by the AIF: the SVD family (methods: oSVD, cSVD, Tikhonov) and the
Bayesian posterior (bayes)."""
MAP_METHODS = ("osvd", "csvd", "tikhonov", "bayes")
"""Every method of the maps (maps.compute), as the command line, the modules and the web app offer them."""
