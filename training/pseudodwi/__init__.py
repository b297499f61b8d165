"""Pseudo-DWI + SLNet training and evaluation (Wang et al., MedIA 2020)."""
