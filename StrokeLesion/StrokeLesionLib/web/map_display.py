"""What the web app's views show beside the images: the two layouts, the maps' colour bars (Slicer's colour
legends in the compare views, CSS gradients in the side panel) and the data probe's line of text."""
from typing import Dict, List

import numpy as np

from AIFSelectorLib.mrml.conversion import array_from_volume, ras_to_zyx
from AIFSelectorLib.mrml.display import COMPARE_VIEWS, MAP_DISPLAY

REVIEW_VIEW = "Red"
"""The review layout's one axial slice view (Slicer's Red view): the CTP, the Pvol overlay, the segments."""

LEGEND_CLASS = "vtkMRMLColorLegendDisplayNode"


def review_layouts() -> Dict[str, object]:
    """'review': the axial view of the CTP; 'maps': six axial views, CBF CBV MTT / Tmax TTP rCBF (the
    Slicer modules' compare layout, same view names)."""
    from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition
    review = ViewLayoutDefinition.axial_view(REVIEW_VIEW)
    rows = [Layout(LayoutDirection.Horizontal,
                   [ViewLayoutDefinition.axial_view(name) for name in COMPARE_VIEWS[r * 3:r * 3 + 3]])
            for r in range(2)]
    return {"review": Layout(LayoutDirection.Vertical, [review]),
            "maps": Layout(LayoutDirection.Vertical, rows)}


def css_gradient(color_node, n: int = 12) -> str:
    """A CSS linear-gradient of ``color_node``'s colour ramp (left = window minimum)."""
    lut = color_node.GetScalarsToColors() if color_node is not None else None
    if lut is None:
        return "linear-gradient(90deg, #000, #fff)"
    lo, hi = lut.GetRange()
    stops = []
    for i, v in enumerate(np.linspace(lo, hi, n)):
        r, g, b = (int(255 * c) for c in lut.GetColor(float(v))[:3])
        stops.append(f"rgb({r},{g},{b}) {100 * i / (n - 1):.0f}%")
    return "linear-gradient(90deg, " + ", ".join(stops) + ")"


def map_legend(map_nodes: Dict[str, object]) -> List[dict]:
    """Per map: name, unit, display window and the colour ramp as a CSS gradient (the side panel's bars)."""
    out = []
    for key, node in map_nodes.items():
        display = node.GetDisplayNode()
        lo, hi = display.GetWindowLevelMin(), display.GetWindowLevelMax()
        out.append({"key": key, "name": MAP_DISPLAY[key][0], "unit": MAP_DISPLAY[key][1],
                    "min": round(lo, 3), "max": round(hi, 3), "gradient": css_gradient(display.GetColorNode())})
    return out


def remove_color_legends(scene) -> None:
    """Legends go before their volumes (a legend outliving its volume's display node makes every view log
    an error)."""
    for node in [scene.GetNthNodeByClass(i, LEGEND_CLASS) for i in range(scene.GetNumberOfNodesByClass(LEGEND_CLASS))]:
        scene.RemoveNode(node)


def add_color_legends(scene, map_nodes: Dict[str, object], views: Dict[str, object]) -> None:
    """Slicer's colour legend (bar, title with unit) in each compare view, for that view's map only."""
    import slicer
    for key, node in map_nodes.items():
        view = views.get(MAP_DISPLAY[key][0])
        if node is None or view is None:
            continue
        legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(node)
        if legend is None:  # added hidden, shown once it knows its colours (no warning from the views)
            legend = slicer.vtkMRMLColorLegendDisplayNode()
            legend.SetVisibility(False)
            scene.AddNode(legend)
            legend.SetAndObservePrimaryDisplayNode(node.GetDisplayNode())
            node.AddAndObserveDisplayNodeID(legend.GetID())
        legend.SetViewNodeIDs([view.get_view_node().GetID()])
        legend.SetSize(0.08, 0.42)  # a narrow bar at the right edge: a compare view is small
        legend.SetPosition(0.99, 0.5)
        name, unit = MAP_DISPLAY[key][0], MAP_DISPLAY[key][1]
        legend.SetTitleText(f"{name} ({unit})" if unit else name)
        legend.SetVisibility(True)


def probe_text(session, ras, frame_index: int, with_maps: bool) -> str:
    """The voxel under RAS ``ras`` (mm): its indices, HU in the frame shown and, with the maps, their values."""
    series = session.series()
    idx = ras_to_zyx([ras], series.geometry, series.shape_zyx)
    if not len(idx):
        return ""
    z, y, x = (int(v) for v in idx[0])
    text = f"voxel (x {x}, y {y}, slice {z}): {series.data[frame_index, z, y, x]:.0f} HU"
    if with_maps:
        values = [f"{MAP_DISPLAY[k][0]} {float(array_from_volume(node)[z, y, x]):.3g}"
                  for k, node in session.map_nodes().items() if node is not None]
        text += " | " + ", ".join(values)
    return text
