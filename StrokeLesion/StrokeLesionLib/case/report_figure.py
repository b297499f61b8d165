"""report.png: what a radiologist checks at a glance.

Top row: AIF and VOF curves (HU over seconds, the scaled AIF that was deconvolved dashed), and where they
came from (Pvol over the temporal maximum image). Middle row: CBF, CBV, MTT, Tmax on the slice with the
largest hypoperfused area. Bottom row: core (red) and penumbra (green) on four slices, with volumes, and the deep
model's lesion outlined in yellow when one was run.
"""
from pathlib import Path

import numpy as np

from AIFSelectorLib.io.volume_io import atomic_path

MAP_DISPLAY = {  # name: (title, colour map, vmin, vmax)
    "cbf": ("CBF ml/100g/min", "jet", 0, 80),
    "cbv": ("CBV ml/100g", "jet", 0, 6),
    "mtt": ("MTT s", "jet", 0, 16),
    "tmax": ("Tmax s", "jet", 0, 12),
}


def _lesion_slices(result, n: int):
    area = (result.core | result.penumbra).sum(axis=(1, 2))
    nz = len(area)
    best = int(np.argmax(area)) if area.any() else nz // 2
    start = int(np.clip(best - n // 2, 0, max(nz - n, 0)))
    return best, list(range(start, min(start + n, nz)))


def save_report_figure(result, path) -> Path:
    """Draws the figure for a pipeline CaseResult and writes it atomically as PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series, f, p = result.series, result.functions, result.perfusion
    t = series.times_s - series.times_s[0]
    base = result.prepared.baseline_hu
    anatomy_window = dict(cmap="gray", vmin=0, vmax=80)
    best, shown = _lesion_slices(result, 4)

    fig, axes = plt.subplots(3, 4, figsize=(16, 12), constrained_layout=True)
    ax = axes[0, 0]
    n0 = result.prepared.bolus.n_baseline
    ax.plot(t, f.aif_hu - np.mean(f.aif_hu[:n0]), "r-", label=f"AIF ({f.method})")
    ax.plot(t, p.aif_enh_hu, "r--", lw=1, label=f"AIF x{p.aif_scale:.2f} (deconvolved)")
    if f.vof_hu is not None:
        ax.plot(t, f.vof_hu - np.mean(f.vof_hu[:n0]), "b-", label="VOF")
    ax.axvline(result.prepared.bolus.arrival_s, color="gray", ls=":", lw=1)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("enhancement (HU)")
    flags = [k for k, v in p.quality_flags.items() if v]
    ax.set_title("AIF/VOF" + (f"  flags: {', '.join(flags)}" if flags else "  quality: ok"), fontsize=10)
    ax.legend(fontsize=8)

    for ax, pvol, name, cmap in ((axes[0, 1], f.aif_pvol, "AIF", "autumn"),
                                 (axes[0, 2], f.vof_pvol, "VOF", "winter")):
        if pvol is None:
            ax.set_axis_off()
            ax.set_title(f"{name}: no Pvol (curve from file)", fontsize=10)
            continue
        z = int(np.argmax(pvol.sum(axis=(1, 2))))
        ax.imshow(base[z], **anatomy_window)
        # a softmax Pvol is positive everywhere: show where it holds weight (>= 2 % of its maximum)
        shown_p = np.ma.masked_less(pvol[z], 0.02 * float(pvol.max()))
        ax.imshow(shown_p, cmap=cmap, alpha=0.9, vmin=0.0, vmax=float(pvol.max()))
        ax.set_title(f"{name} Pvol, slice {z}", fontsize=10)
        ax.set_axis_off()

    ax = axes[0, 3]
    ax.axis("off")
    v = result.volumes
    th = result.options.thresholds
    lines = [f"core (rCBF<{th.core_rcbf:.0%}, Tmax>{th.tmax_s:g}s): {v['core_ml']:.1f} ml",
             f"penumbra: {v['penumbra_ml']:.1f} ml",
             f"Tmax>{th.tmax_s:g}s: {v['hypoperfused_ml']:.1f} ml",
             "mismatch ratio: " + ("n/a (no core)" if v["mismatch_ratio"] is None else f"{v['mismatch_ratio']:.2f}"),
             f"mismatch volume: {v['mismatch_volume_ml']:.1f} ml",
             f"deconvolution: {result.options.method}",
             *([f"lesion ({result.options.lesion_model}): {result.lesion_info.get('lesion_ml', float('nan')):.1f} ml"]
               if result.lesion is not None else []),
             f"bolus arrival: {result.prepared.bolus.arrival_s:.1f} s"]
    ax.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=11)

    for ax, (name, (title, cmap, lo, hi)) in zip(axes[1], MAP_DISPLAY.items()):
        im = ax.imshow(np.ma.masked_where(~p.tissue[best], p.maps[name][best]), cmap=cmap, vmin=lo, vmax=hi)
        ax.set_title(f"{title}, slice {best}", fontsize=10)
        ax.set_axis_off()
        fig.colorbar(im, ax=ax, shrink=0.7)

    for ax, z in zip(axes[2], shown + [None] * (4 - len(shown))):
        ax.set_axis_off()
        if z is None:
            continue
        ax.imshow(base[z], **anatomy_window)
        overlay = np.zeros(base[z].shape + (4,))
        overlay[result.penumbra[z]] = (0.1, 0.8, 0.1, 0.5)
        overlay[result.core[z]] = (0.9, 0.1, 0.1, 0.6)
        ax.imshow(overlay)
        if result.lesion is not None and result.lesion[z].any():
            ax.contour(result.lesion[z].astype(np.float32), levels=[0.5], colors=["yellow"], linewidths=1.0)
        ax.set_title(f"core/penumbra{'/lesion' if result.lesion is not None else ''}, slice {z}", fontsize=10)

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return Path(path)
