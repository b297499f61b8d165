"""The web page's plot of the input functions: AIF, VOF (and the automatic ones when corrected) and the tissue
curve under the cursor, HU against seconds, as an SVG string (drawn in ~1 ms, so it can follow the mouse).

The tissue curve's enhancement is ~1-5 % of the AIF's, so it has its own axis on the right (HU, green).
Each curve is a ``<polyline data-curve="<column>">`` so that a test can read what is drawn.
"""
from typing import Dict, List, Optional, Sequence, Tuple

from StrokeLesionLib.case.report_figure import nice_ticks

CURVE_STYLES = {
    # column: (label, colour, dash, axis)
    "aif_auto_hu": ("AIF auto", "#e06666", "4 3", "left"),
    "vof_auto_hu": ("VOF auto", "#6f8fd8", "4 3", "left"),
    "aif_hu": ("AIF", "#d0021b", "", "left"),
    "vof_hu": ("VOF", "#1f4fbf", "", "left"),
    "tissue_hu": ("tissue", "#2e9e44", "", "right"),
}


def _range(series: Sequence[Sequence[Optional[float]]]) -> Tuple[float, float]:
    values = [v for s in series for v in s if v is not None]
    if not values:
        return 0.0, 1.0
    lo, hi = min(values), max(values)
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    return lo - pad, hi + pad


def curves_svg(curves: Dict[str, List[Optional[float]]], width: int = 440, height: int = 250,
               corrected: bool = False) -> str:
    """SVG of ``curves`` (ReviewSession.curves(): time_s and HU columns, None for a missing value).
    The automatic curves are drawn (dashed) only when ``corrected``."""
    if not curves or not curves.get("time_s"):
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
                f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" font-size="13" fill="#888">'
                'no input functions yet</text></svg>')
    t = curves["time_s"]
    shown = [c for c in CURVE_STYLES if c in curves and any(v is not None for v in curves[c])
             and (corrected or not c.endswith("_auto_hu"))]
    left = [curves[c] for c in shown if CURVE_STYLES[c][3] == "left"]
    right = [curves[c] for c in shown if CURVE_STYLES[c][3] == "right"]
    m_l, m_r, m_t, m_b = 52, 48 if right else 14, 26, 34
    pw, ph = width - m_l - m_r, height - m_t - m_b
    t0, t1 = float(t[0]), float(t[-1]) if t[-1] > t[0] else float(t[0]) + 1.0
    y_left, y_right = _range(left), _range(right)

    def sx(x):
        return m_l + (x - t0) / (t1 - t0) * pw

    def sy(y, rng):
        return m_t + ph - (y - rng[0]) / (rng[1] - rng[0]) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11" data-plot="input-functions">',
           f'<rect x="{m_l}" y="{m_t}" width="{pw}" height="{ph}" fill="#fff" stroke="#999"/>']
    for x in nice_ticks(t0, t1, 6):
        out.append(f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{m_t + ph}" y2="{m_t + ph + 4}" stroke="#666"/>'
                   f'<text x="{sx(x):.1f}" y="{m_t + ph + 15}" text-anchor="middle">{x:g}</text>')
    out.append(f'<text x="{m_l + pw / 2}" y="{height - 4}" text-anchor="middle">time (s)</text>')
    for y in nice_ticks(*y_left, 5):
        out.append(f'<line x1="{m_l - 4}" x2="{m_l + pw}" y1="{sy(y, y_left):.1f}" y2="{sy(y, y_left):.1f}" '
                   f'stroke="#eee"/><text x="{m_l - 6}" y="{sy(y, y_left) + 4:.1f}" text-anchor="end">{y:g}</text>')
    out.append(f'<text transform="translate(12,{m_t + ph / 2}) rotate(-90)" text-anchor="middle">'
               'AIF, VOF (HU)</text>')
    if right:
        for y in nice_ticks(*y_right, 5):
            out.append(f'<text x="{m_l + pw + 6}" y="{sy(y, y_right) + 4:.1f}" fill="#2e9e44">{y:g}</text>')
        out.append(f'<text transform="translate({width - 8},{m_t + ph / 2}) rotate(90)" text-anchor="middle" '
                   'fill="#2e9e44">tissue (HU)</text>')
    legend_x = m_l + 4
    for c in shown:
        label, colour, dash, axis = CURVE_STYLES[c]
        rng = y_left if axis == "left" else y_right
        segments, current = [], []
        for x, y in zip(t, curves[c]):
            if y is None:
                if current:
                    segments.append(current)
                current = []
            else:
                current.append(f"{sx(x):.1f},{sy(y, rng):.1f}")
        if current:
            segments.append(current)
        for points in segments:
            out.append(f'<polyline data-curve="{c}" fill="none" stroke="{colour}" stroke-width="1.6" '
                       f'stroke-dasharray="{dash}" points="{" ".join(points)}"/>')
        out.append(f'<line x1="{legend_x}" x2="{legend_x + 16}" y1="{m_t - 12}" y2="{m_t - 12}" stroke="{colour}" '
                   f'stroke-width="2" stroke-dasharray="{dash}"/><text x="{legend_x + 19}" y="{m_t - 8}">{label}</text>')
        legend_x += 26 + 6.2 * len(label)
    out.append("</svg>")
    return "".join(out)
