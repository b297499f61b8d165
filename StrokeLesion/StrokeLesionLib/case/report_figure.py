"""report.png: what a radiologist checks at a glance, on one page.

Header: the case (source file or DICOM series description), acquisition date, and "research use only".
Top row: AIF and VOF enhancement curves (HU over seconds; the AIF as deconvolved, scaled to the VOF's area,
dashed), where they came from (the Pvol over the pre-contrast image, its peak ringed), and the numbers
(volumes, mismatch, hypoperfusion intensity ratio, method). Middle row: CBF, CBV, MTT, Tmax, TTP and rCBF
on the slice with the largest hypoperfused area (vessels and CSF are masked out: the white gaps). Bottom
row: core (red) and penumbra (green), Tmax > 10 s outlined (magenta) and the deep model's lesion (yellow)
on six slices. Every image carries its orientation (R/L, A/P from the series geometry, radiological
convention when the data are stored so) and its slice position in mm.
"""
from pathlib import Path
from typing import Optional

import numpy as np

from AIFSelectorLib.io.volume_io import atomic_path

MAP_DISPLAY = {  # name: (title, colour map, vmin, vmax)
    "cbf": ("CBF ml/100g/min", "jet", 0, 80),
    "cbv": ("CBV ml/100g", "jet", 0, 6),
    "mtt": ("MTT s", "jet", 0, 16),
    "tmax": ("Tmax s", "jet", 0, 12),
    "ttp": ("TTP s", "jet", None, None),
    "rcbf": ("rCBF (fraction of control)", "jet", 0, 1.5),
}
COLOURS = {"core": (0.9, 0.1, 0.1), "penumbra": (0.1, 0.8, 0.1), "severe": (0.9, 0.0, 0.9), "lesion": (1.0, 0.85, 0.0)}
RESEARCH_LINE = "Research use only - not for diagnosis or treatment decisions."
N_SLICES = 6


def _lesion_slices(result, n: int):
    area = (result.core | result.penumbra).sum(axis=(1, 2))
    nz = len(area)
    best = int(np.argmax(area)) if area.any() else nz // 2
    start = int(np.clip(best - n // 2, 0, max(nz - n, 0)))
    return best, list(range(start, min(start + n, nz)))


def orientation_labels(direction) -> dict:
    """Labels of the image edges {'left', 'right', 'top', 'bottom'} of a (y, x) slice shown with x to the
    right and y down, from the LPS direction matrix (row-major, columns = index axes)."""
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    names = (("R", "L"), ("A", "P"), ("I", "S"))  # LPS: +x is L, +y is P, +z is S

    def ends(column):
        axis = int(np.argmax(np.abs(column)))
        lo, hi = names[axis]
        return (lo, hi) if column[axis] > 0 else (hi, lo)
    left, right = ends(d[:, 0])
    top, bottom = ends(d[:, 1])
    return {"left": left, "right": right, "top": top, "bottom": bottom}


def slice_position_mm(geometry, z: int) -> float:
    """The slice's position (mm) along the patient axis its normal follows most (z of LPS for axial data)."""
    d = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    axis = int(np.argmax(np.abs(d[:, 2])))
    return float(geometry.origin_mm[axis] + z * geometry.spacing_mm[2] * d[axis, 2])


def _image(ax, img, labels, title, **kw):
    im = ax.imshow(img, **kw)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()  # no ticks to lay out and draw (a third of the figure's time)
    style = dict(color="white", fontsize=8, fontweight="bold", transform=ax.transAxes)
    ax.text(0.02, 0.5, labels["left"], ha="left", va="center", **style)
    ax.text(0.98, 0.5, labels["right"], ha="right", va="center", **style)
    ax.text(0.5, 0.98, labels["top"], ha="center", va="top", **style)
    ax.text(0.5, 0.02, labels["bottom"], ha="center", va="bottom", **style)
    return im


def save_report_figure(result, path, source: Optional[dict] = None) -> Path:
    """Draws the figure for a pipeline CaseResult and writes it atomically as PNG. ``source``: report.json's
    "input" section (source, series description, acquisition date) for the header."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    series, f, p = result.series, result.functions, result.perfusion
    g = series.geometry
    labels = orientation_labels(g.direction)
    t = series.times_s - series.times_s[0]
    base = result.prepared.baseline_hu
    anatomy = dict(cmap="gray", vmin=0, vmax=80)
    best, shown = _lesion_slices(result, N_SLICES)
    source = source or {}

    fig = plt.figure(figsize=(18, 10.5))
    grid = fig.add_gridspec(3, 6, left=0.045, right=0.98, top=0.9, bottom=0.04, wspace=0.12, hspace=0.28)
    where = Path(str(source.get("source", "") or "CTP series"))
    name = source.get("series_description") or "/".join(where.parts[-2:])
    date = source.get("acquisition_date", "")
    date = f"{date[:4]}-{date[4:6]}-{date[6:8]}" if len(date) == 8 and date.isdigit() else date
    fig.suptitle(f"StrokeLesion CT perfusion - {name}" + (f" - acquired {date}" if date else ""),
                 fontsize=14, fontweight="bold", x=0.02, ha="left", y=0.985)
    fig.text(0.02, 0.945, RESEARCH_LINE + f"  Frames every {series.dt_s:g} s; "
             f"voxels {g.spacing_mm[0]:.2g} x {g.spacing_mm[1]:.2g} x {g.spacing_mm[2]:.2g} mm.",
             fontsize=10, color="darkred")

    ax = fig.add_subplot(grid[0, 0:2])
    n0 = result.prepared.bolus.n_baseline
    scale = float(f.details.get("aif_partial_volume_scale", 1.0)) * p.aif_scale
    ax.plot(t, p.aif_enh_hu, "r-", label=f"AIF ({f.method}) x{scale:.2f}, scaled to the VOF area (deconvolved)")
    if f.vof_hu is not None:
        ax.plot(t, f.vof_hu - np.mean(f.vof_hu[:n0]), "b-", label="VOF")
    ax.axvline(result.prepared.bolus.arrival_s, color="gray", ls=":", lw=1, label="bolus arrival")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("enhancement (HU)")
    flags = [k.replace("_", " ") for k, v in p.quality_flags.items() if v]
    ax.set_title("AIF / VOF" + (f" - quality flags: {', '.join(flags)}" if flags else " - quality: no flag"),
                 fontsize=10, color="darkred" if flags else "black")
    ax.legend(fontsize=8)

    for col, pvol, kind, colour in ((2, f.aif_pvol, "AIF", "red"), (3, f.vof_pvol, "VOF", "deepskyblue")):
        ax = fig.add_subplot(grid[0, col])
        if pvol is None:
            ax.set_axis_off()
            ax.set_title(f"{kind}: no Pvol (curve from a file)", fontsize=9)
            continue
        z = int(np.argmax(pvol.sum(axis=(1, 2))))
        _image(ax, base[z], labels, f"{kind} Pvol, z = {slice_position_mm(g, z):.1f} mm", **anatomy)
        # a softmax Pvol is positive everywhere: show where it holds weight (>= 2 % of its maximum)
        ax.imshow(np.ma.masked_less(pvol[z], 0.02 * float(pvol.max())), cmap="autumn", alpha=0.9,
                  vmin=0.0, vmax=float(pvol.max()))
        y, x = np.unravel_index(int(np.argmax(pvol[z])), pvol[z].shape)
        ax.scatter([x], [y], s=260, facecolors="none", edgecolors=colour, linewidths=2.0)

    ax = fig.add_subplot(grid[0, 4:6])
    ax.axis("off")
    v = result.volumes
    th = result.options.thresholds
    hir = v.get("hypoperfusion_intensity_ratio")
    lines = [f"core (rCBF < {th.core_rcbf:.0%}, Tmax > {th.tmax_s:g} s): {v['core_ml']:.1f} ml",
             f"penumbra: {v['penumbra_ml']:.1f} ml",
             f"Tmax > {th.tmax_s:g} s: {v['hypoperfused_ml']:.1f} ml",
             "mismatch ratio: " + ("n/a (no core)" if v["mismatch_ratio"] is None else f"{v['mismatch_ratio']:.2f}"),
             f"mismatch volume: {v['mismatch_volume_ml']:.1f} ml",
             f"Tmax > 10 s: {v.get('tmax_severe_ml', float('nan')):.1f} ml, "
             f"HIR {'n/a' if hir is None else f'{hir:.2f}'}",
             *([f"lesion ({result.options.lesion_model}): {result.lesion_info.get('lesion_ml', float('nan')):.1f} ml"]
               if result.lesion is not None else []),
             f"deconvolution: {result.options.method}",
             f"bolus arrival: {result.prepared.bolus.arrival_s:.1f} s"]
    ax.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=11)

    for col, (key, (title, cmap, lo, hi)) in enumerate(MAP_DISPLAY.items()):
        ax = fig.add_subplot(grid[1, col])
        values = p.maps[key][best]
        if lo is None:
            inside = values[p.tissue[best]]
            lo, hi = 0.0, float(np.percentile(inside, 99.5)) if inside.size else 1.0
        im = _image(ax, np.ma.masked_where(~p.tissue[best], values), labels,
                    f"{title}, z = {slice_position_mm(g, best):.1f} mm", cmap=cmap, vmin=lo, vmax=hi)
        fig.colorbar(im, ax=ax, shrink=0.75, pad=0.02)
    fig.text(0.02, 0.355, "Maps: vessels and CSF are masked out (white gaps); colours at fixed windows.",
             fontsize=9, style="italic")

    severe = p.maps["tmax"] > 10.0
    for col, z in enumerate(shown + [None] * (N_SLICES - len(shown))):
        ax = fig.add_subplot(grid[2, col])
        if z is None:
            ax.set_axis_off()
            continue
        _image(ax, base[z], labels, f"z = {slice_position_mm(g, z):.1f} mm", **anatomy)
        overlay = np.zeros(base[z].shape + (4,))
        overlay[result.penumbra[z]] = COLOURS["penumbra"] + (0.5,)
        overlay[result.core[z]] = COLOURS["core"] + (0.6,)
        ax.imshow(overlay)
        at_risk_severe = severe[z] & (result.core[z] | result.penumbra[z])
        if at_risk_severe.any():
            ax.contour(at_risk_severe.astype(np.float32), levels=[0.5], colors=[COLOURS["severe"]], linewidths=0.8)
        if result.lesion is not None and result.lesion[z].any():
            ax.contour(result.lesion[z].astype(np.float32), levels=[0.5], colors=[COLOURS["lesion"]], linewidths=1.2)
    legend = [Patch(color=COLOURS["core"], label="core"), Patch(color=COLOURS["penumbra"], label="penumbra"),
              Patch(facecolor="none", edgecolor=COLOURS["severe"], label="Tmax > 10 s")]
    if result.lesion is not None:
        legend.append(Patch(facecolor="none", edgecolor=COLOURS["lesion"], label=f"lesion ({result.options.lesion_model})"))
    fig.legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=10, frameon=False,
               bbox_to_anchor=(0.5, 0.0))

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return Path(path)
