"""The one AIF/VOF selection policy, used by every front end (command line, Python, Slicer modules, web).

Selectors (one set of names everywhere):
- ``aifnet`` (default): AIFNet (:mod:`input_functions.aifnet`). When torch is missing or the weights are
  unusable (missing, corrupted, of another kind), the classic selector is used instead and a warning says
  so; when one of AIFNet's probability volumes is diffuse, that curve is replaced by the classic one, with
  a warning. Any other error is an error.
- ``classic``: the classic selector (:mod:`input_functions.classic`), no network.
- a path to an AIF file (``time_s,aif_hu[,vof_hu]``, :mod:`io.aif_csv`) on the series' time grid; a file
  without ``vof_hu`` gets a warning (no partial-volume correction).
``auto``, the Slicer modules' former name of ``aifnet``, is read as ``aifnet`` (old scenes).

The curves of both selectors come out in absolute HU of blood (:func:`on_blood_level`): the AIF, a
partial-volume mixture of artery and tissue, is scaled to the VOF's area as the maps use it (tracer
conservation), and both curves stand on the VOF's pre-contrast level (arterial and venous blood have the
same HU before the contrast). The maps depend only on the scaled enhancement, so they do not change; a
file's curves are used as given.
"""
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from AIFSelectorLib.errors import InputError
from AIFSelectorLib.input_functions.classic import select_classic
from AIFSelectorLib.input_functions.functions import InputFunctions, baseline_removed, vof_scale
from AIFSelectorLib.io import aif_csv
from AIFSelectorLib.prepare.prepared import PreparedSeries

SELECTORS = ("aifnet", "classic")
LEGACY_NAMES = {"auto": "aifnet"}


def canonical_selector(selector: str) -> str:
    """The selector's name in SELECTORS ('auto' -> 'aifnet'); a path is returned unchanged."""
    return LEGACY_NAMES.get(str(selector), str(selector))


def classic_functions(prepared: PreparedSeries) -> InputFunctions:
    return select_classic(prepared.series, prepared.intracranial, prepared.baseline_hu, prepared.peak_enh_hu)


def select_input_functions(prepared: PreparedSeries, selector: str = "aifnet", device: Optional[str] = None,
                           progress: Optional[Callable[[float, str], None]] = None) -> InputFunctions:
    """AIF/VOF of a prepared series by ``selector`` (see the module doc). ``device``: AIFNet's torch device
    (None or 'auto': CUDA when present). ``progress``: optional callable(fraction, message)."""
    report = progress or (lambda fraction, message="": None)
    selector = canonical_selector(selector)
    report(0.0, "selecting the AIF and VOF")
    if selector == "classic":
        functions = on_blood_level(classic_functions(prepared), prepared.bolus.n_baseline)
    elif selector == "aifnet":
        functions = on_blood_level(_aifnet_or_fallback(prepared, device), prepared.bolus.n_baseline)
    else:
        if not Path(selector).suffix.lower() == ".csv" and not Path(selector).exists():
            raise InputError(f"unknown AIF selector {selector!r}: use {' or '.join(SELECTORS)}, or an AIF CSV file")
        functions = _from_file(prepared, selector)
    report(1.0, "done")
    return functions


def on_blood_level(functions: InputFunctions, n_baseline: int) -> InputFunctions:
    """The AIF's enhancement scaled to the VOF's area (vof_scale: the partial-volume correction the maps
    apply) on the VOF's pre-contrast level, so the AIF reads in HU of arterial blood; the factor is in
    details['aif_partial_volume_scale']. Without a VOF the curves are returned as they are."""
    if functions.vof_hu is None:
        return functions
    aif_enh = baseline_removed(functions.aif_hu, n_baseline)
    scale = vof_scale(aif_enh, baseline_removed(functions.vof_hu, n_baseline))
    level = float(np.mean(np.asarray(functions.vof_hu, dtype=np.float64)[:max(1, n_baseline)]))
    functions.aif_hu = level + scale * aif_enh
    functions.details["aif_partial_volume_scale"] = scale
    return functions


def _aifnet_or_fallback(prepared: PreparedSeries, device: Optional[str]) -> InputFunctions:
    try:
        from AIFSelectorLib.input_functions.aifnet.inference import select_aifnet
        from AIFSelectorLib.models.weights import WeightsError
    except ImportError as e:
        reason = f"torch is not available ({e})"
    else:
        try:
            return select_aifnet(prepared.series, device=device, n_baseline=prepared.bolus.n_baseline,
                                 peak_enh_hu=prepared.peak_enh_hu, classic=lambda: classic_functions(prepared))
        except WeightsError as e:
            reason = str(e)
    functions = classic_functions(prepared)
    functions.warnings.insert(0, f"AIFNet unavailable, the classic AIF selector was used instead: {reason}")
    functions.details["aifnet_fallback"] = reason
    return functions


def _from_file(prepared: PreparedSeries, path) -> InputFunctions:
    times, aif_hu, vof_hu = aif_csv.read_aif_csv(path, times_s=prepared.series.times_s)
    warnings = [] if vof_hu is not None else [
        f"{Path(path).name} has no vof_hu column: the AIF is not scaled to a venous output function (no "
        f"partial-volume correction), so absolute CBF and CBV may be biased"]
    return InputFunctions(times_s=times, aif_hu=aif_hu, vof_hu=vof_hu, method="file",
                          details={"file": str(path)}, warnings=warnings)
