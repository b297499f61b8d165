"""Fixtures shared by the test folders (one folder per stage, as the code: docs/architecture.md)."""
import pytest

from AIFSelectorLib.io.volume_io import write_series_nifti
from AIFSelectorLib.phantom.case import make_phantom


@pytest.fixture(scope="session")
def small_case():
    """A small phantom case: 4 x 64 x 64 voxels, 30 frames at 1 s, seed 5 (fast enough for whole-CLI tests)."""
    return make_phantom(seed=5, shape_zyx=(4, 64, 64), n_frames=30)


@pytest.fixture(scope="session")
def small_ctp(small_case, tmp_path_factory):
    """The small case's CTP as a 4D NIfTI file (read-only for the tests: copy it to change it)."""
    return write_series_nifti(tmp_path_factory.mktemp("small_ctp") / "ctp.nii.gz", small_case.series)
