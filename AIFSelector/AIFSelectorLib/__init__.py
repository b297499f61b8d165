"""The engine of StrokeLesion, GUI-free, in pipeline order (see docs/architecture.md):

``io`` (read and write) -> ``prepare`` (bolus, baseline, masks, denoising) -> ``input_functions`` (AIF/VOF:
classic, AIFNet, the selection policy) -> ``deconvolution`` -> ``maps`` -> ``thresholds`` (core/penumbra),
with ``models`` (weights, device, network blocks), ``phantom`` (the digital phantom, imported by no stage)
and ``mrml`` (everything that touches Slicer's MRML, including the AIFSelector module's Logic).

Nothing in this package imports Qt; only ``mrml`` imports slicer/vtk MRML classes; torch is imported only
by the network packages, when they are used.
"""

__version__ = "0.1.0"
"""The version of the whole project (pyproject reads it from here)."""
