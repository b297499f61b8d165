"""Stage 0, reading and writing: CTP series from NIfTI, NRRD, DICOM and ISLES 2018; volumes; AIF files."""
