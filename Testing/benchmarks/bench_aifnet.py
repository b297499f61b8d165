"""AIFNet inference benchmark (not collected by pytest):

    python Testing/benchmarks/bench_aifnet.py [--threads 2] [--device cpu|cuda|auto] [--paper]

Times AIF + VOF inference (both networks, Pvol volumes, curves, VOF recalibration) with the shipped
weights on a 256 x 256 x 16 x 48 series (budget: <= 5 s on 2 CPU cores), prints the networks' parameter
counts and MACs, and with --paper the cost of the paper's widths (16..256 filters, K=5) measured on a
256 x 256 x 2 slab and scaled to 16 slices.
"""
import argparse
import time

import numpy as np
import torch

from AIFSelectorLib.input_functions.aifnet import inference as inf, networks
from AIFSelectorLib.input_functions.aifnet.model import AIFNet, AIFNetConfig, macs_per_voxel
from AIFSelectorLib.models.blocks import count_parameters
from AIFSelectorLib.models.device import resolve_device
from AIFSelectorLib.io.ctp_io import series_from_array


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--paper", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    data = (40 + 5 * rng.standard_normal((48, 16, 256, 256))).astype(np.float32)
    t = np.arange(48.0)
    bolus = 300 * np.clip(t - 8, 0, None) ** 3 * np.exp(-np.clip(t - 8, 0, None) / 1.5) / (4.5 ** 3 * np.exp(-3))
    data[:, 8, 100:103, 120:123] += bolus[:, None, None].astype(np.float32)
    series = series_from_array(data, dt_s=1.0, spacing_mm=(0.9, 0.9, 6.0))
    dev = resolve_device(args.device)
    for kind in ("aif", "vof"):
        m, info = networks.load_model(kind, device=dev)
        n_vox = int(np.prod(series.shape_zyx))
        print(f"{kind}: widths {m.config.widths}, n_frames {m.config.n_frames}, {count_parameters(m)} parameters, "
              f"{macs_per_voxel(m.config) * n_vox / 1e9:.1f} GMAC on 256x256x16, file {info['file']}")
    inf.select_aifnet(series, device=str(dev.type), n_baseline=5)  # warm-up (loads, hashes, allocates)
    times = []
    for _ in range(args.repeats):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        inf.select_aifnet(series, device=str(dev.type), n_baseline=5)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    print(f"AIF+VOF inference on 256x256x16x48, {dev.type}, {args.threads} threads: "
          f"best {min(times):.2f} s, median {np.median(times):.2f} s (budget 5 s on 2 CPU cores)")
    if args.paper:
        cfg = AIFNetConfig(n_frames=40, n_layers=5, base_width=16, max_width=None)
        net = AIFNet(cfg).eval().to(dev)
        x = torch.from_numpy(data[:40, :2].copy())[None].to(dev)
        with torch.inference_mode():
            net.logits(x)
            t0 = time.perf_counter()
            net.logits(x)
            dt = time.perf_counter() - t0
        print(f"paper widths {cfg.widths}: {count_parameters(net)} parameters, "
              f"{macs_per_voxel(cfg) * 16 * 256 * 256 / 1e12:.2f} TMAC on 256x256x16; "
              f"{dt:.2f} s per 2 slices -> ~{dt * 8:.0f} s for 16 slices (AIF only, {dev.type}, {args.threads} threads)")


if __name__ == "__main__":
    main()
