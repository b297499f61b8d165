"""AIFNet: the network (model) and its inference (Pvol volumes, weighted curves). Imports torch."""
