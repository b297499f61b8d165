"""Pseudo-DWI + SLNet (Wang et al., MedIA 2020) on a CTP series and its maps."""
