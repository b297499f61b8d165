"""report.png: what a radiologist checks at a glance, on one page (1440 px wide, landscape).

Header: the case (source file or DICOM series description), acquisition date, and "research use only".
Top row: AIF and VOF enhancement curves (HU over seconds; the AIF as deconvolved, scaled to the VOF's area),
where they came from (the Pvol over the pre-contrast image, its peak ringed), and the numbers (volumes,
mismatch, hypoperfusion intensity ratio, method). Middle row: CBF, CBV, MTT, Tmax, TTP and rCBF on the slice
with the largest hypoperfused area, each with its colour bar (vessels and CSF are masked out: the white
gaps). Bottom row: core (red) and penumbra (green), Tmax > 10 s outlined (magenta) and the deep model's
lesion (yellow) on six slices. Every image carries its orientation (R/L, A/P from the series geometry,
radiological convention when the data are stored so) and its slice position in mm.

Drawn for speed (~0.1 s, matplotlib not imported): the images are composed as one RGB array with numpy
(colour tables, nearest-neighbour tiles, outlines as mask edges); Pillow draws the curves, the text (with the
DejaVu fonts matplotlib ships) and writes the PNG at zlib level 1.
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
    "ttp": ("TTP s", "jet", 0, 40),  # the web app's and Slicer module's fixed window (mrml/display.py)
    "rcbf": ("rCBF (of control)", "jet", 0, 1.5),
}
COLOURS = {"core": (0.9, 0.1, 0.1), "penumbra": (0.1, 0.8, 0.1), "severe": (0.9, 0.0, 0.9), "lesion": (1.0, 0.85, 0.0)}
RESEARCH_LINE = "Research use only - not for diagnosis or treatment decisions."
N_SLICES = 6
ANATOMY_WINDOW_HU = (0.0, 80.0)

WIDTH, HEIGHT = 1440, 900
"""The page, px."""
TILE = 220
"""An image tile, px (slices are shown nearest-neighbour at this size, aspect kept)."""
GAP = 16
LEFT = (WIDTH - N_SLICES * TILE - (N_SLICES - 1) * GAP) // 2
ROW_TOP = (84, 346, 648)
"""Top of each row's tiles, px from the page's top (a title line sits above each tile)."""


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


_JET = {"r": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
        "g": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
        "b": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0))}
_AUTUMN = {"r": ((0.0, 1.0), (1.0, 1.0)), "g": ((0.0, 0.0), (1.0, 1.0)), "b": ((0.0, 0.0), (1.0, 0.0))}


def colour_table(name: str) -> np.ndarray:
    """(256, 3) uint8 RGB of the colour map 'jet' or 'autumn' (matplotlib's segment data, without importing
    matplotlib)."""
    nodes = {"jet": _JET, "autumn": _AUTUMN}[name]
    x = np.linspace(0.0, 1.0, 256)
    return np.stack([np.interp(x, *np.asarray(nodes[c]).T) for c in "rgb"], axis=-1).__mul__(255).astype(np.uint8)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list:
    """About ``n`` round tick values covering [lo, hi]."""
    import math
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(n, 1)
    step = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * step:
            step *= m
            break
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def to_rgb(values: np.ndarray, table: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(h, w, 3) uint8: ``values`` through ``table`` over [lo, hi]."""
    index = np.clip((values - lo) * (255.0 / (hi - lo if hi > lo else 1.0)), 0, 255).astype(np.uint8)
    return table[index]


def tile_index(shape) -> tuple:
    """Row and column indices that show an (h, w) image as a TILE-sized tile, nearest neighbour, aspect
    kept (the longer side fills the tile); with the tile's (height, width)."""
    h, w = shape
    scale = TILE / max(h, w)
    th, tw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    return (np.minimum((np.arange(th) / scale).astype(int), h - 1),
            np.minimum((np.arange(tw) / scale).astype(int), w - 1)), (th, tw)


def edges(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a 2-D mask (the mask less its 4-neighbour erosion)."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


class Page:
    """The page as an RGB array, with text and rings drawn by Pillow at the end, in page pixels (top-left
    origin). Text styles follow matplotlib's names (fontsize in points at 100 dpi, ha, va, fontweight,
    style, family, color) and its DejaVu fonts."""

    def __init__(self):
        self.rgb = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
        self.texts = []
        self.rings = []
        self.lines = []

    def text(self, x, y, s, **style):
        self.texts.append((x, y, s, style))

    def ring(self, x, y, radius, colour) -> None:
        self.rings.append((x, y, radius, colour))

    def tile(self, col: int, row: int, rgb: np.ndarray, title: str, labels: dict, letters: str = "white") -> tuple:
        """Puts a (h, w, 3) image into tile (col, row) under ``title``, with the orientation ``labels`` in the
        colour ``letters``; returns the tile's (x, y, w, h)."""
        (rows, cols), (th, tw) = tile_index(rgb.shape[:2])
        x = LEFT + col * (TILE + GAP) + (TILE - tw) // 2
        y = ROW_TOP[row] + (TILE - th) // 2
        self.rgb[y:y + th, x:x + tw] = rgb[rows[:, None], cols[None, :]]
        self.text(LEFT + col * (TILE + GAP) + TILE / 2, ROW_TOP[row] - 4, title, ha="center", va="bottom",
                  fontsize=9)
        letter = dict(color=letters, fontsize=8, fontweight="bold")
        self.text(x + 3, y + th / 2, labels["left"], ha="left", va="center", **letter)
        self.text(x + tw - 3, y + th / 2, labels["right"], ha="right", va="center", **letter)
        self.text(x + tw / 2, y + 2, labels["top"], ha="center", va="top", **letter)
        self.text(x + tw / 2, y + th - 2, labels["bottom"], ha="center", va="bottom", **letter)
        return x, y, tw, th

    def slice_index(self, shape, x, y, w, h, point):
        """Page position of voxel (row, col) ``point`` of an image of ``shape`` shown in tile (x, y, w, h)."""
        return x + (point[1] + 0.5) * w / shape[1], y + (point[0] + 0.5) * h / shape[0]

    def image(self):
        """The finished page as a Pillow image."""
        from PIL import Image, ImageDraw
        image = Image.fromarray(self.rgb)
        draw = ImageDraw.Draw(image)
        for points, colour, width in self.lines:
            draw.line(points, fill=colour, width=width)
        for x, y, radius, colour in self.rings:
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=_rgb255(colour), width=2)
        for x, y, s, style in self.texts:
            anchor = {"left": "l", "center": "m", "right": "r"}[style.get("ha", "left")] + \
                {"top": "a", "center": "m", "bottom": "d", "baseline": "s"}[style.get("va", "baseline")]
            fill = _rgb255(style.get("color", "black"))
            font = _font(style.get("family", "sans"), style.get("fontweight", "normal"),
                         style.get("style", "normal"), int(round(style.get("fontsize", 10) * 100 / 72)))
            if style.get("rotation"):  # a vertical label: drawn on its own, turned, pasted centred at (x, y)
                box = draw.textbbox((0, 0), s, font=font)
                label = Image.new("RGBA", (box[2] - box[0] + 2, box[3] - box[1] + 2), (255, 255, 255, 0))
                ImageDraw.Draw(label).text((-box[0], -box[1]), s, font=font, fill=fill)
                label = label.rotate(style["rotation"], expand=True)
                image.paste(label, (int(x), int(y - label.size[1] / 2)), label)
            elif "\n" in s:
                draw.multiline_text((x, y), s, font=font, fill=fill, anchor="la", spacing=4)
            else:
                draw.text((x, y), s, font=font, fill=fill, anchor=anchor)
        return image


_FONTS = {}


def _font(family: str, weight: str, style: str, size_px: int):
    """A Pillow font from the DejaVu files matplotlib ships (found without importing matplotlib), cached."""
    key = (family, weight, style, size_px)
    if key not in _FONTS:
        import importlib.util
        import os
        from PIL import ImageFont
        folder = os.path.join(importlib.util.find_spec("matplotlib").submodule_search_locations[0],
                              "mpl-data", "fonts", "ttf")
        name = "DejaVuSansMono" if family == "monospace" else "DejaVuSans"
        suffix = {(True, False): "-Bold", (False, True): "-Oblique", (True, True): "-BoldOblique"}.get(
            (weight == "bold", style == "italic"), "")
        if name == "DejaVuSansMono" and suffix == "-Oblique":
            suffix = "-Oblique"
        _FONTS[key] = ImageFont.truetype(os.path.join(folder, name + suffix + ".ttf"), size_px)
    return _FONTS[key]


def _grey(image: np.ndarray) -> np.ndarray:
    lo, hi = ANATOMY_WINDOW_HU
    g = np.clip((image - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=-1)


def _blend(rgb: np.ndarray, mask: np.ndarray, colour, alpha: float) -> None:
    rgb[mask] = (rgb[mask] * (1.0 - alpha) + np.asarray(colour) * 255.0 * alpha).astype(np.uint8)


def save_report_figure(result, path, source: Optional[dict] = None) -> Path:
    """Draws the page for a pipeline CaseResult and writes it atomically as PNG. ``source``: report.json's
    "input" section (source, series description, acquisition date) for the header."""
    series, f, p = result.series, result.functions, result.perfusion
    g = series.geometry
    labels = orientation_labels(g.direction)
    t = series.times_s - series.times_s[0]
    base = result.prepared.baseline_hu
    best, shown = _lesion_slices(result, N_SLICES)
    source = source or {}
    page = Page()

    where = Path(str(source.get("source", "") or "CTP series"))
    name = source.get("series_description") or "/".join(where.parts[-2:])
    date = source.get("acquisition_date", "")
    date = f"{date[:4]}-{date[4:6]}-{date[6:8]}" if len(date) == 8 and date.isdigit() else date
    page.text(LEFT, 8, f"StrokeLesion CT perfusion - {name}" + (f" - acquired {date}" if date else ""),
              fontsize=14, fontweight="bold", va="top")
    page.text(LEFT, 36, RESEARCH_LINE + f"  Frames every {series.dt_s:g} s; voxels {g.spacing_mm[0]:.2g} x "
              f"{g.spacing_mm[1]:.2g} x {g.spacing_mm[2]:.2g} mm.", fontsize=10, color="darkred", va="top")

    # ---- top row: Pvol tiles (the curves' axes and the numbers are drawn below, as matplotlib artists)
    rings = []
    for col, pvol, kind, colour in ((2, f.aif_pvol, "AIF", COLOURS["core"]), (3, f.vof_pvol, "VOF", (0.0, 0.75, 1.0))):
        if pvol is None:
            page.text(LEFT + col * (TILE + GAP) + TILE / 2, ROW_TOP[0] + TILE / 2,
                      f"{kind}: no Pvol\n(curve from a file)", ha="center", va="center", fontsize=9)
            continue
        z = int(np.argmax(pvol.sum(axis=(1, 2))))
        rgb = _grey(base[z])
        # a softmax Pvol is positive everywhere: show where it holds weight (>= 2 % of its maximum)
        peak = float(pvol.max())
        held = pvol[z] >= 0.02 * peak
        heat = to_rgb(pvol[z], colour_table("autumn"), 0.0, peak if peak > 0 else 1.0)
        rgb[held] = (0.1 * rgb[held] + 0.9 * heat[held]).astype(np.uint8)
        box = page.tile(col, 0, rgb, f"{kind} Pvol, z = {slice_position_mm(g, z):.1f} mm", labels)
        rings.append((page.slice_index(pvol[z].shape, *box, np.unravel_index(int(np.argmax(pvol[z])), pvol[z].shape)),
                      colour))

    # ---- middle row: the maps with their colour bars
    jet = colour_table("jet")
    for col, (key, (title, cmap, lo, hi)) in enumerate(MAP_DISPLAY.items()):
        values = p.maps[key][best]
        tissue = p.tissue[best]
        rgb = to_rgb(values, jet if cmap == "jet" else colour_table(cmap), lo, hi)
        rgb[~tissue] = 255
        x, y, w, h = page.tile(col, 1, rgb, f"{title}, z = {slice_position_mm(g, best):.1f} mm", labels,
                               letters="dimgray")  # the maps lie on white
        x0, y0 = LEFT + col * (TILE + GAP), ROW_TOP[1] + TILE + 6
        page.rgb[y0:y0 + 8, x0:x0 + TILE] = jet[np.linspace(0, 255, TILE).astype(int)][None, :, :]
        page.text(x0, y0 + 10, f"{lo:g}", fontsize=8, va="top")
        page.text(x0 + TILE, y0 + 10, f"{hi:.3g}", fontsize=8, va="top", ha="right")
    page.text(LEFT, ROW_TOP[1] + TILE + 34, "Maps: vessels and CSF are masked out (white gaps); colours at fixed "
              "windows.", fontsize=9, style="italic", va="top")

    # ---- bottom row: core, penumbra, Tmax > 10 s and the model's lesion on six slices
    severe = p.maps["tmax"] > 10.0
    for col, z in enumerate(shown):
        rgb = _grey(base[z])
        _blend(rgb, result.penumbra[z], COLOURS["penumbra"], 0.5)
        _blend(rgb, result.core[z], COLOURS["core"], 0.6)
        at_risk_severe = severe[z] & (result.core[z] | result.penumbra[z])
        rgb[edges(at_risk_severe)] = (np.asarray(COLOURS["severe"]) * 255).astype(np.uint8)
        if result.lesion is not None:
            rgb[edges(result.lesion[z])] = (np.asarray(COLOURS["lesion"]) * 255).astype(np.uint8)
        page.tile(col, 2, rgb, f"z = {slice_position_mm(g, z):.1f} mm", labels)
    legend = [("core", COLOURS["core"]), ("penumbra", COLOURS["penumbra"]), ("Tmax > 10 s (outline)", COLOURS["severe"])]
    if result.lesion is not None:
        legend.append((f"lesion ({result.options.lesion_model}, outline)", COLOURS["lesion"]))
    x = WIDTH / 2 - sum(40 + 7 * len(label) for label, _ in legend) / 2
    for label, colour in legend:
        y = ROW_TOP[2] + TILE + 12
        page.rgb[y:y + 12, int(x):int(x) + 12] = (np.asarray(colour) * 255).astype(np.uint8)
        page.text(x + 17, y + 6, label, fontsize=10, va="center")
        x += 40 + 7 * len(label)

    # ---- the curves
    draw_curves(page, result, t, (LEFT, ROW_TOP[0] - 20, 2 * TILE + GAP, TILE + 20))
    for (px, py), colour in rings:
        page.ring(px, py, 12, colour)

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
             *uncertainty_lines(result.volume_ranges, th.tmax_s),
             f"bolus arrival: {result.prepared.bolus.arrival_s:.1f} s"]
    page.text(LEFT + 4 * (TILE + GAP), ROW_TOP[0], "\n".join(lines), va="top", family="monospace", fontsize=11)
    with atomic_path(path, suffix=".png") as tmp:
        page.image().save(tmp, format="PNG", compress_level=1)
    return Path(path)


def uncertainty_lines(ranges, tmax_s: float) -> list:
    """With posterior SDs (method 'bayes'): the volume ranges they imply (report.json's volume_ranges_ml)."""
    if not ranges:
        return []
    return ["95 % per-voxel intervals give:"] + [
        f"  {label} {ranges[key][0]:.1f}-{ranges[key][1]:.1f} ml"
        for key, label in (("core_ml", "core"), ("penumbra_ml", "penumbra"),
                           ("hypoperfused_ml", f"Tmax > {tmax_s:g} s"))]


def draw_curves(page: "Page", result, t, box) -> None:
    """The AIF (as deconvolved) and VOF enhancement curves against seconds, in the page box (x, y, w, h)."""
    f, p = result.functions, result.perfusion
    x0, y0, w, h = box
    left, right, top, bottom = x0 + 52, x0 + w - 6, y0 + 22, y0 + h - 30
    n0 = result.prepared.bolus.n_baseline
    scale = float(f.details.get("aif_partial_volume_scale", 1.0)) * p.aif_scale
    curves = [(np.asarray(p.aif_enh_hu, float), "red", f"AIF ({f.method}) x{scale:.2f}, scaled to the VOF area")]
    if f.vof_hu is not None:
        curves.append((np.asarray(f.vof_hu, float) - np.mean(f.vof_hu[:n0]), "blue", "VOF"))
    lo = min(float(np.nanmin(c)) for c, _, _ in curves)
    hi = max(float(np.nanmax(c)) for c, _, _ in curves)
    pad = 0.05 * (hi - lo if hi > lo else 1.0)
    lo, hi = lo - pad, hi + pad
    t0, t1 = float(t[0]), float(t[-1]) if t[-1] > t[0] else float(t[0]) + 1.0

    def sx(v):
        return left + (v - t0) / (t1 - t0) * (right - left)

    def sy(v):
        return bottom - (v - lo) / (hi - lo) * (bottom - top)

    page.lines.append(([(left, top), (right, top), (right, bottom), (left, bottom), (left, top)], (0, 0, 0), 1))
    for v in nice_ticks(t0, t1, 6):
        page.lines.append(([(sx(v), bottom), (sx(v), bottom + 4)], (0, 0, 0), 1))
        page.text(sx(v), bottom + 6, f"{v:g}", ha="center", va="top", fontsize=8)
    for v in nice_ticks(lo, hi, 5):
        page.lines.append(([(left - 4, sy(v)), (left, sy(v))], (0, 0, 0), 1))
        page.text(left - 6, sy(v), f"{v:g}", ha="right", va="center", fontsize=8)
    page.text((left + right) / 2, y0 + h - 2, "time (s)", ha="center", va="bottom", fontsize=9)
    page.text(x0 + 2, (top + bottom) / 2, "enhancement (HU)", ha="center", va="top", fontsize=9, rotation=90)
    arrival = sx(result.prepared.bolus.arrival_s)
    for start in np.arange(top, bottom, 6.0):
        page.lines.append(([(arrival, start), (arrival, min(start + 3, bottom))], (128, 128, 128), 1))
    for values, colour, label in curves:
        page.lines.append(([(sx(a), sy(b)) for a, b in zip(t, values)], _rgb255(colour), 2))
    flags = [k.replace("_", " ") for k, v in p.quality_flags.items() if v]
    page.text((left + right) / 2, y0 + 2, "AIF / VOF" + (f" - quality flags: {', '.join(flags)}" if flags
              else " - quality: no flag"), ha="center", va="top", fontsize=10, color="darkred" if flags else "black")
    ly = top + 8
    for values, colour, label in curves + [(None, "gray", "bolus arrival")]:
        page.lines.append(([(right - 250, ly), (right - 232, ly)], _rgb255(colour), 2))
        page.text(right - 228, ly, label, va="center", fontsize=7)
        ly += 12


def _rgb255(colour) -> tuple:
    from PIL import ImageColor
    return ImageColor.getrgb(colour) if isinstance(colour, str) else tuple(int(255 * c) for c in colour)
