"""How the AIFSelector module shows things: map windows, units and colour tables, the Pvol colours, the CTP
window, the curve chart's series styles, the markups colours and the six-view compare layout, shared by the
Logic, the scene bundle and the web app."""

MAP_DISPLAY = {
    # name: (node name, unit, window/level min and max, colour node IDs in order of preference)
    "cbf": ("CBF", "ml/100g/min", (0.0, 80.0)),
    "cbv": ("CBV", "ml/100g", (0.0, 6.0)),
    "mtt": ("MTT", "s", (0.0, 16.0)),
    "tmax": ("Tmax", "s", (0.0, 12.0)),
    "ttp": ("TTP", "s", (0.0, 40.0)),
    "rcbf": ("rCBF", "fraction of control", (0.0, 1.5)),
    "rcbv": ("rCBV", "fraction of control", (0.0, 1.5)),
    "cbf_sd": ("CBF SD", "ml/100g/min", (0.0, 20.0)),
    "tmax_sd": ("Tmax SD", "s", (0.0, 3.0)),
}
# The SD windows, a quarter of CBF's and Tmax's: on the demo phantom the CBF SD is a median 17 % of CBF in healthy
# tissue (~5-10 ml/100g/min), the Tmax SD a median 0.8 s there and 1.6-2.3 s in the lesion.
# TTP counts from the series' first frame (it depends on when the scan started and the bolus arrived): 0-40 s is
# fixed, like the other windows, for the usual 40-60 s acquisition with the arterial peak at 10-20 s (the demo
# phantom's AIF peaks at 13 s, its healthy tissue at 15-20 s and its hypoperfused tissue up to 29 s).
MAP_COLORS = ("vtkMRMLPETProceduralColorNodePET-Rainbow2",)
"""The maps' colours: PET-Rainbow2 (black at zero, then blue, green, yellow, red), a procedural table that
every Slicer and slicer-core scene holds, so the app and a scene bundle show the same colours."""
PVOL_COLORS = ("vtkMRMLPETProceduralColorNodePET-Heat",)
"""The probability volumes' colours: PET-Heat (black, red, yellow, white), in every scene too."""
CTP_WINDOW_HU = (0.0, 80.0)
"""The CTP images open at a brain window, W 80 / L 40 HU (grey and white matter apart)."""

MAP_UNITS_UCUM = {"cbf": ("mL/(100.g)/min", "ml/100g/min"), "cbv": ("mL/(100.g)", "ml/100g"), "mtt": ("s", "s"),
                  "tmax": ("s", "s"), "ttp": ("s", "s"), "rcbf": ("1", "fraction of control"),
                  "rcbv": ("1", "fraction of control"), "cbf_sd": ("mL/(100.g)/min", "ml/100g/min"),
                  "tmax_sd": ("s", "s")}
"""Each map's voxel-value unit as a UCUM code and its meaning, set as the volume's standard unit (Slicer
shows it where it shows units, e.g. the data probe)."""
MAP_QUANTITIES = {"cbf": "Cerebral blood flow", "cbv": "Cerebral blood volume", "mtt": "Mean transit time",
                  "tmax": "Time to maximum of the residue function", "ttp": "Time to peak",
                  "rcbf": "Relative cerebral blood flow", "rcbv": "Relative cerebral blood volume",
                  "cbf_sd": "Posterior standard deviation of CBF",
                  "tmax_sd": "Posterior standard deviation of Tmax"}

CURVE_COLUMNS = ("time_s", "aif_hu", "vof_hu", "aif_auto_hu", "vof_auto_hu", "tissue_hu")
SERIES_STYLE = {
    # plot series name: (table column, colour, line style)
    "AIF": ("aif_hu", (0.85, 0.1, 0.1), "solid"),
    "VOF": ("vof_hu", (0.1, 0.3, 0.9), "solid"),
    "Tissue (cursor)": ("tissue_hu", (0.1, 0.65, 0.2), "solid"),
    "AIF (automatic)": ("aif_auto_hu", (0.85, 0.5, 0.5), "dash"),
    "VOF (automatic)": ("vof_auto_hu", (0.5, 0.6, 0.9), "dash"),
}

COMPARE_LAYOUT_ID = 5120
COMPARE_VIEWS = ("CBF", "CBV", "MTT", "Tmax", "TTP", "rCBF")
_VIEW_COLORS = ("#E17012", "#9A1B1B", "#2B8C3B", "#1B5EA6", "#7A3EA0", "#B08B18")
COMPARE_LAYOUT_XML = (
    '<layout type="vertical">'
    + "".join(
        '<item><layout type="horizontal">'
        + "".join(
            f'<item><view class="vtkMRMLSliceNode" singletontag="{v}">'
            '<property name="orientation" action="default">Axial</property>'
            f'<property name="viewlabel" action="default">{v}</property>'
            f'<property name="viewcolor" action="default">{c}</property>'
            '<property name="viewgroup" action="default">1</property>'
            '</view></item>'
            for v, c in zip(COMPARE_VIEWS[row * 3:row * 3 + 3], _VIEW_COLORS[row * 3:row * 3 + 3]))
        + '</layout></item>'
        for row in range(2))
    + '</layout>')
"""Six linked axial views, one per map (CBF, CBV, MTT / Tmax, TTP, rCBF)."""

MARKUPS = {"artery": ("arteryMarkups", "AIF arteries", (0.9, 0.1, 0.1)),
           "vein": ("veinMarkups", "VOF veins", (0.1, 0.3, 0.9))}


def store_compare_views(scene) -> None:
    """A layout node (when the scene has none, as outside the application) and, for each of COMPARE_VIEWS
    missing, its slice node (axial) and slice composite node, named after the view, so that the layout
    manager of the application that opens the scene reuses them."""
    import slicer
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    if scene.GetFirstNodeByClass("vtkMRMLLayoutNode") is None:
        layout = slicer.vtkMRMLLayoutNode()
        layout.SetSingletonTag("vtkMRMLLayoutNode")
        scene.AddNode(layout)
    existing = {scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode").GetLayoutName()
                for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))}
    for view in COMPARE_VIEWS:
        if view in existing:
            continue
        slice_node = slicer.vtkMRMLSliceNode()
        slice_node.SetName(view)
        slice_node.SetLayoutName(view)
        slice_node.SetSingletonTag(view)
        slice_node.SetOrientationToAxial()
        scene.AddNode(slice_node)
        composite = slicer.vtkMRMLSliceCompositeNode()
        composite.SetLayoutName(view)
        composite.SetSingletonTag(view)
        scene.AddNode(composite)
