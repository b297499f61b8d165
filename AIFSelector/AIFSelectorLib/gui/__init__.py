"""Qt helpers the two Slicer module Widgets share (the only package code that imports Qt): background
work with progress and Cancel, and the installers of Python dependencies and PyTorch."""
