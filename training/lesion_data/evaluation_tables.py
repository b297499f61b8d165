"""The papers' table layouts for the evaluate commands of the three lesion models: one row per method or
ablation, one column per metric, each cell the mean +/- sample standard deviation over the cases.

    rows = [("SLNet (maps only)", per_case_metrics_a), ("pseudo-DWI + SLNet", per_case_metrics_b)]
    print(format_table(rows, SEGMENTATION_COLUMNS, title="Table 5 - held-out phantom cases"))

``per_case_metrics`` is a sequence of dicts (one per case, e.g. from
``StrokeLesionLib.metrics.segmentation_metrics``). NaN values (e.g. a Hausdorff distance of an
empty prediction) are left out of a cell's mean and sd, and the cell then says how many cases it holds.
A column marked ``fixed`` (e.g. the parameter count) prints the row's one value instead. Output is ASCII.
"""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple

import numpy as np

from AIFSelectorLib.io.volume_io import atomic_path


@dataclass(frozen=True)
class Column:
    """A table column: the metric ``key`` in the per-case dicts, its ``header``, decimals, a ``scale``
    applied before printing (100 for percent), and ``fixed`` for one value per row (not mean +/- sd)."""

    key: str
    header: str
    digits: int = 3
    scale: float = 1.0
    fixed: bool = False


SEGMENTATION_COLUMNS = (Column("dice", "Dice"), Column("precision", "Precision"), Column("recall", "Recall"),
                        Column("hausdorff95_mm", "HD95 (mm)", 1), Column("assd_mm", "ASSD (mm)", 2),
                        Column("relative_volume_error", "RVE"))
"""Overlap, distance and volume columns of lesion_metrics.segmentation_metrics."""
SYNTHESIS_COLUMNS = (Column("ssim", "SSIM"), Column("psnr_db", "PSNR (dB)", 2),
                     Column("ssim_lesion", "local SSIM"), Column("psnr_lesion_db", "local PSNR (dB)", 2))
"""Global and lesion-local image similarity (lesion_metrics.synthesis_metrics): the pseudo-DWI synthesis table."""
PARAMETERS_COLUMN = Column("n_parameters", "Params", 0, fixed=True)


def mean_sd(values: Sequence[float]) -> Tuple[float, float, int]:
    """(mean, sample sd (0 for one value), n) of the finite values; (nan, nan, 0) when there are none."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def summary(cases: Sequence[Mapping[str, float]], keys: Sequence[str]) -> dict:
    """{key: {'mean', 'sd', 'n'}} over the per-case metric dicts where the value is defined (NaN and missing
    values left out; a key no case defines is left out)."""
    out = {}
    for k in keys:
        mean, sd, n = mean_sd([c.get(k) for c in cases])
        if n:
            out[k] = {"mean": mean, "sd": sd, "n": n}
    return out


def format_cell(values: Sequence[float], column: Column) -> str:
    """'mean +/- sd' (or the fixed value) of one row's values for ``column``; 'n/a' without values, and
    ' (n=k)' when NaN values were left out."""
    if column.fixed:
        finite = [x for x in values if x is not None and np.isfinite(x)]
        if not finite:
            return "n/a"
        value = finite[0] * column.scale
        return f"{value:,.0f}" if column.digits == 0 else f"{value:.{column.digits}f}"
    mean, sd, n = mean_sd(values)
    if n == 0:
        return "n/a"
    cell = f"{mean * column.scale:.{column.digits}f} +/- {sd * column.scale:.{column.digits}f}"
    return cell if n == len(values) else f"{cell} (n={n})"


def format_table(rows: Sequence[Tuple[str, Sequence[Mapping[str, float]]]], columns: Sequence[Column],
                 title: Optional[str] = None, first_header: str = "Method", markdown: bool = False) -> str:
    """The table as text: a header, then one line per (name, per-case metric dicts) row. ``markdown``
    writes a Markdown table (for model cards) instead of aligned columns."""
    header = [first_header] + [c.header for c in columns]
    body = [[name] + [format_cell([case.get(c.key, float("nan")) for case in cases], c) for c in columns]
            for name, cases in rows]
    lines = [title] if title else []
    if markdown:
        lines += ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]

    def line(cells):
        return "  ".join(cells[0].ljust(widths[0]) if i == 0 else cells[i].rjust(widths[i])
                         for i in range(len(cells))).rstrip()
    rule = "-" * len(line(header))
    lines += [rule, line(header), rule] + [line(r) for r in body] + [rule]
    return "\n".join(lines)


def write_report(path, report: Mapping) -> None:
    """Writes an evaluate command's report as indented JSON at ``path``, atomically (numpy scalars as floats)."""
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(json.dumps(report, indent=1, default=float) + "\n", encoding="utf-8")
