"""GUI-free science of the AIFSelector module: CTP series I/O and preprocessing, arterial and venous
input functions, deconvolution, perfusion maps and the digital phantom.

Nothing in this package imports Qt. The science modules import neither Slicer nor torch; the MRML glue
(``mrml_conversion``, ``mrml_scene``, ``aif_selector_logic``) imports the vtkMRML classes of ``slicer``
(the Slicer application or the slicer-core package) and the AIFNet modules import torch, each only
when used.
"""
