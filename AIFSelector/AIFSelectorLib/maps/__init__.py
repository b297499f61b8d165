"""Stage 4, perfusion maps: CBF, CBV, MTT, Tmax, TTP and relative maps of a prepared series."""
