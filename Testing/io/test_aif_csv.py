"""The AIF file (time_s,aif_hu[,vof_hu]): round trips and every bad-input error."""
import numpy as np
import pytest

from AIFSelectorLib.io.aif_csv import read_aif_csv, write_aif_csv
from AIFSelectorLib.errors import InputError

TIMES = np.arange(20) * 1.5 + 0.25
AIF = 40.0 + 300.0 * np.exp(-0.5 * ((TIMES - 12.0) / 3.0) ** 2)
VOF = 45.0 + 420.0 * np.exp(-0.5 * ((TIMES - 16.0) / 4.0) ** 2)


def test_round_trip_with_and_without_vof(tmp_path):
    path = write_aif_csv(tmp_path / "out" / "aif.csv", TIMES, AIF, VOF)
    assert path.read_text(encoding="utf-8").splitlines()[0] == "time_s,aif_hu,vof_hu"
    times, aif, vof = read_aif_csv(path, times_s=TIMES)
    np.testing.assert_allclose(times, TIMES, rtol=1e-9)
    np.testing.assert_allclose(aif, AIF, rtol=1e-9)
    np.testing.assert_allclose(vof, VOF, rtol=1e-9)
    write_aif_csv(path, TIMES, AIF)  # overwrites atomically
    times, aif, vof = read_aif_csv(path)
    assert vof is None and len(aif) == 20
    assert [p.name for p in path.parent.iterdir()] == ["aif.csv"]  # no temporary file left


def test_free_column_order_comments_and_blank_lines(tmp_path):
    path = tmp_path / "aif.csv"
    path.write_text("# exported by hand\nvof_hu, time_s ,aif_hu\n"
                    + "".join(f"{v},{t},{a}\n\n" for t, a, v in zip(TIMES, AIF, VOF)))
    times, aif, vof = read_aif_csv(path, times_s=TIMES + 0.01)  # within 5 % of the 1.5 s interval
    np.testing.assert_allclose(vof, VOF)
    np.testing.assert_array_equal(times, TIMES + 0.01)  # the series' own grid
    np.testing.assert_allclose(read_aif_csv(path)[0], TIMES)


def write_rows(path, header, rows):
    path.write_text(header + "\n" + "".join(",".join(str(v) for v in r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("header, rows, message", [
    ("time,aif", [(0, 1), (1, 2)],
     r"aif\.csv: missing column\(s\) time_s, aif_hu; unexpected column\(s\) 'time', 'aif'"),
    ("time_s", [(0,), (1,)], r"aif\.csv: missing column\(s\) aif_hu"),
    ("time_s,aif_hu,tissue_hu", [(0, 1, 2), (1, 2, 3)], r"unexpected column\(s\) 'tissue_hu'"),
    ("time_s,aif_hu,aif_hu", [(0, 1, 2), (1, 2, 3)], r"duplicate column\(s\) aif_hu"),
    ("time_s,aif_hu", [(0, 40), (1, "high")], r"aif\.csv line 3: aif_hu value 'high' is not a number"),
    ("time_s,aif_hu", [(0, 40), (1, "nan")], r"aif\.csv line 3: aif_hu is nan \(NaN or infinite\)"),
    ("time_s,aif_hu,vof_hu", [(0, 40, 1), (1, 41, "inf")], r"line 3: vof_hu is inf"),
    ("time_s,aif_hu", [(0, 40), (1, 41, 5)], r"aif\.csv line 3: 3 values for 2 columns"),
    ("time_s,aif_hu", [(0, 40), (2, 41), (2, 42)],
     r"aif\.csv: time_s must be strictly increasing \(line 4: 2 s after 2 s\)"),
    ("time_s,aif_hu", [(0, 40)], r"aif\.csv: needs at least 2 rows"),
    ("", [], r"aif\.csv is empty"),
])
def test_bad_files(tmp_path, header, rows, message):
    path = write_rows(tmp_path / "aif.csv", header, rows)
    with pytest.raises(InputError, match=message):
        read_aif_csv(path)


def test_grid_must_match_the_series(tmp_path):
    path = write_aif_csv(tmp_path / "aif.csv", TIMES, AIF)
    with pytest.raises(InputError, match=r"aif\.csv has 20 time points but the CTP series has 25 frames"):
        read_aif_csv(path, times_s=np.arange(25) * 1.5)
    with pytest.raises(InputError, match=r"aif\.csv: time grid does not match the CTP series \(row 1: 0\.25 s in the "
                                         r"file, 0 s in the series\)"):
        read_aif_csv(path, times_s=np.arange(20) * 1.5)
    with pytest.raises(InputError, match="AIF file not found"):
        read_aif_csv(tmp_path / "missing.csv")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 50)
    with pytest.raises(InputError, match=r"cannot read binary\.csv: not a CSV text file"):
        read_aif_csv(binary)


def test_write_rejects_mismatched_curves(tmp_path):
    with pytest.raises(ValueError, match="same length"):
        write_aif_csv(tmp_path / "aif.csv", TIMES, AIF[:-1])
    with pytest.raises(ValueError, match="finite"):
        write_aif_csv(tmp_path / "aif.csv", TIMES, np.full(20, np.nan))
    assert not list(tmp_path.iterdir())
