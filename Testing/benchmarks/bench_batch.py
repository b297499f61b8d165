"""Cases per minute of `strokelesion batch` with 1 and 2 local workers on this machine, measured in one run
(a script, not collected by pytest).

    python Testing/benchmarks/bench_batch.py [--cases 8] [--shape 4 128 128] [--frames 40] [--aif classic]
"""
import argparse
import shutil
import tempfile
import time
from pathlib import Path

from AIFSelectorLib.io.volume_io import write_series_nifti
from AIFSelectorLib.phantom.case import make_phantom
from StrokeLesionLib.cli import main


def cohort(root: Path, n: int, shape, frames: int) -> Path:
    for i in range(n):
        folder = root / "cases" / f"case{i:02d}"
        folder.mkdir(parents=True)
        write_series_nifti(folder / "ctp.nii.gz", make_phantom(seed=100 + i, shape_zyx=tuple(shape), n_frames=frames).series)
    return root / "cases"


def main_bench():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=8)
    p.add_argument("--shape", type=int, nargs=3, default=(4, 128, 128))
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--aif", default="classic", choices=("classic", "aifnet"))
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    try:
        cases = cohort(root, args.cases, args.shape, args.frames)
        warm = root / "warm"
        warm.mkdir()
        shutil.copytree(cases / "case00", warm / "case00")
        main(["batch", str(warm), "--out", str(root / "out-warm"), "--workers", "1", "--aif", args.aif])  # caches
        rate = {}
        for workers in (1, 2):
            t0 = time.perf_counter()
            status = main(["batch", str(cases), "--out", str(root / f"out{workers}"), "--workers", str(workers),
                           "--aif", args.aif])
            seconds = time.perf_counter() - t0
            rate[workers] = 60.0 * args.cases / seconds
            print(f"{workers} worker(s): {args.cases} cases in {seconds:.1f} s, {rate[workers]:.1f} cases/min "
                  f"(exit {status})")
        print(f"2 workers / 1 worker: {rate[2] / rate[1]:.2f}x")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main_bench()
