"""Everything that touches Slicer's MRML: array/node conversion, the scene, the AIFSelector module's Logic."""
