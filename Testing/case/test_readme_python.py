"""The README's Python block runs as written, on a phantom series and its true AIF as the corrected one."""
import re
from pathlib import Path

import numpy as np

from AIFSelectorLib.io.aif_csv import write_aif_csv
from AIFSelectorLib.io.volume_io import write_series_nifti
from AIFSelectorLib.prepare.prepared import prepare

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_python_block_recomputes_only_the_maps(small_case, tmp_path, monkeypatch):
    block = re.search(r"^## Python\n\n```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S | re.M).group(1)
    write_series_nifti(tmp_path / "ctp.nii.gz", small_case.series)
    write_aif_csv(tmp_path / "corrected_aif.csv", small_case.series.times_s, small_case.aif_hu, small_case.vof_hu)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - the README's own example
    result, corrected = namespace["result"], namespace["corrected"]
    assert {"core_ml", "penumbra_ml", "mismatch_ratio"} <= set(corrected) <= set(result.volumes)
    assert namespace["functions"].method == "file"
    assert namespace["perfusion"].maps["cbf"].shape == small_case.series.shape_zyx
    fresh = prepare(result.series)  # the prepared series was not changed by two runs of compute_maps
    np.testing.assert_array_equal(result.prepared.vessels, fresh.vessels)
    np.testing.assert_array_equal(result.prepared.brain, fresh.brain)
    assert not np.array_equal(namespace["perfusion"].maps["cbf"], result.perfusion.maps["cbf"])
