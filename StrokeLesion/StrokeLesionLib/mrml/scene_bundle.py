"""A Slicer scene bundle (.mrb) of a whole case, as the AIFSelector and StrokeLesion modules would have
left it: the CTP volume sequence (with its browser), the AIF/VOF curves table and plot chart, the Pvol
volumes over the CTP images, the perfusion maps, the Core / Penumbra (/ Lesion (model)) segmentation, the
volumes table, and both modules' parameter nodes referencing all of it.

Built on a standalone ``slicer-core`` scene by the same Logic classes the modules use, so opening the
file in Slicer and entering either module shows the same curves, settings and segments.
``slicer`` is imported only when this module is (``strokelesion run ... --scene OUT.mrb``).
"""
from pathlib import Path
from typing import Optional

import numpy as np

from AIFSelectorLib.mrml.aif_selector_logic import AIFSelectorLogic
from AIFSelectorLib.mrml.scene import StandaloneScene

from StrokeLesionLib.mrml.stroke_lesion_logic import StrokeLesionLogic


def build_case_scene(env: StandaloneScene, result, name: str = "CTP", lesion: Optional[np.ndarray] = None):
    """Fills ``env``'s scene with a pipeline CaseResult; returns (AIFSelectorLogic, StrokeLesionLogic)."""
    aif = AIFSelectorLogic(env.scene)
    options = result.options
    aif.setParameter("method", options.method)
    aif.setParameter("smoothMM", options.smooth_mm)
    aif.setParameter("tmaxThreshold", options.thresholds.tmax_s)
    selector = result.functions.method
    aif.setParameter("selector", selector if selector in ("aifnet", "classic") else "aifnet")
    aif.addSeries(result.series, name)
    aif.setInputFunctions(result.functions, automatic=True)
    aif.setMaps(result.perfusion)
    aif.storeCompareLayout()

    lesion_logic = StrokeLesionLogic(env.scene)
    lesion_logic.setThresholds(options.thresholds.core_rcbf, options.thresholds.tmax_s,
                               options.thresholds.min_island_ml)
    lesion_logic.setInputsFromAIFSelector()
    if lesion is None:
        lesion = getattr(result, "lesion", None)
    if lesion is not None:
        lesion_logic.setParameter("lesionModel", getattr(result, "lesion_model", "pseudodwi") or "pseudodwi")
    lesion_logic.updatePreview()
    lesion_logic.showPreview(False)
    lesion_logic.segment(result.core, result.penumbra, lesion)
    return aif, lesion_logic


def write_scene_bundle(result, path, name: str = "CTP", lesion: Optional[np.ndarray] = None) -> Path:
    """Writes the case as a Slicer scene bundle at ``path`` (.mrb), atomically."""
    path = Path(path)
    with StandaloneScene() as env:
        build_case_scene(env, result, name, lesion)
        return env.save_bundle(path)
