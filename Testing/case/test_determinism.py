"""The same input gives the same maps whatever the thread count (BLAS/OpenMP's and the stages' own pools;
issue: OMP_NUM_THREADS=1 against the
default moved CBF by up to 0.96 ml/100 g/min and Tmax by up to 2.09 s through AIFNet's thread-dependent
sums). Whole processes, since thread pools are sized when numpy and torch load."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from AIFSelectorLib.phantom.case import make_phantom
from AIFSelectorLib.io.volume_io import read_volume, write_series_nifti
from StrokeLesionLib.case.pipeline import MAP_FILES


@pytest.mark.parametrize("aif, method", [("aifnet", "osvd"), ("classic", "osvd"), ("classic", "bayes")])
def test_maps_are_bit_identical_with_one_and_two_threads(tmp_path, aif, method):
    case = make_phantom(seed=3, shape_zyx=(4, 128, 128))
    ctp = write_series_nifti(tmp_path / "ctp.nii.gz", case.series)
    outs = {}
    for threads in ("1", "2"):
        env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads,
                   STROKELESION_THREADS=threads)  # the stages' own pools too (what `batch` gives each case)
        out = tmp_path / f"t{threads}"
        run = subprocess.run([sys.executable, "-m", "StrokeLesionLib.cli", "run", str(ctp), "--aif", aif,
                              "--method", method, "--out", str(out)], env=env, capture_output=True, encoding="utf-8", errors="replace",
                             timeout=600)
        assert run.returncode == 0, run.stderr
        outs[threads] = out
        report = json.loads((out / "report.json").read_text(encoding="utf-8"))
        assert report["threads"]["omp_num_threads"] == threads
        assert report["threads"]["threads_used"] == min(int(threads), report["threads"]["cpu_cores_available"])
    extra = (("aif_pvol", "vof_pvol") if aif == "aifnet" else ()) + (("cbf_sd", "tmax_sd") if method == "bayes" else ())
    for name in MAP_FILES + ("core", "penumbra", "brain_mask") + extra:
        a, _ = read_volume(outs["1"] / f"{name}.nii.gz")
        b, _ = read_volume(outs["2"] / f"{name}.nii.gz")
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert (outs["1"] / "aif.csv").read_text(encoding="utf-8") == (outs["2"] / "aif.csv").read_text(encoding="utf-8")
