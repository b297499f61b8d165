"""GUI-free science of the AIFSelector module: CTP series I/O and preprocessing, arterial and venous
input functions, deconvolution, perfusion maps and the digital phantom.

Nothing in this package imports Qt or Slicer; it runs in the Slicer Python and in plain Python alike.
"""
