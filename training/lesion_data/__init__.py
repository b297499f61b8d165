"""Lesion datasets shared by the lesion models: public-set readers (ISLES 2018, AISD, ATLAS) and phantom slices."""
