"""Arrays <-> MRML nodes: CTP series <-> volume sequences, (z, y, x) arrays <-> scalar volume nodes,
columns <-> table nodes, RAS points -> voxel indices.

Geometry: the science keeps SimpleITK's LPS convention (:mod:`ctp_series`); Slicer nodes are RAS. A node's
IJK-to-RAS matrix is ``diag(-1, -1, 1) @ [direction @ diag(spacing) | origin]`` of the LPS geometry, with
i, j, k the x, y, z index axes of the (z, y, x) arrays. Frame times are the sequence's index values,
in seconds (``ms`` and ``min`` index units are converted).

GUI-free: imports ``slicer`` (vtkMRML classes) and VTK only.
"""
from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from AIFSelectorLib.ctp_series import CTPSeries, VolumeGeometry
from AIFSelectorLib.errors import InputError
from AIFSelectorLib.io.time_grid import seconds_per_unit

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])



# ---------------------------------------------------------------------------------------------- geometry

def ijk_to_ras(geometry: VolumeGeometry) -> np.ndarray:
    """The 4x4 IJK-to-RAS matrix of an LPS geometry."""
    d = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = LPS_TO_RAS @ d @ np.diag(geometry.spacing_mm)
    m[:3, 3] = LPS_TO_RAS @ np.asarray(geometry.origin_mm, dtype=np.float64)
    return m


def geometry_from_ijk_to_ras(matrix) -> VolumeGeometry:
    """The LPS geometry of a 4x4 IJK-to-RAS matrix (numpy or vtkMatrix4x4)."""
    m = _as_array(matrix)
    a = LPS_TO_RAS @ m[:3, :3]
    spacing = np.linalg.norm(a, axis=0)
    if np.any(spacing <= 0):
        raise InputError("the volume's IJK-to-RAS matrix is degenerate (a zero voxel spacing)")
    return VolumeGeometry(tuple(spacing), tuple(LPS_TO_RAS @ m[:3, 3]), tuple((a / spacing).ravel()))


def _as_array(matrix) -> np.ndarray:
    if isinstance(matrix, vtk.vtkMatrix4x4):
        return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    return np.asarray(matrix, dtype=np.float64).reshape(4, 4)


def _vtk_matrix(m: np.ndarray) -> vtk.vtkMatrix4x4:
    out = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            out.SetElement(r, c, float(m[r, c]))
    return out


def node_ijk_to_ras(volume_node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return _as_array(m)


def node_geometry(volume_node) -> VolumeGeometry:
    """The LPS geometry of a volume node (its parent transform, if any, is not applied)."""
    return geometry_from_ijk_to_ras(node_ijk_to_ras(volume_node))


def ras_to_zyx(points_ras, geometry: VolumeGeometry, shape_zyx: Optional[Sequence[int]] = None) -> np.ndarray:
    """Nearest voxel indices (n, 3) as (z, y, x) of RAS points (n, 3). With ``shape_zyx``, points outside
    the volume are dropped."""
    pts = np.asarray(points_ras, dtype=np.float64).reshape(-1, 3)
    if len(pts) == 0:
        return np.zeros((0, 3), dtype=int)
    inv = np.linalg.inv(ijk_to_ras(geometry))
    ijk = (inv[:3, :3] @ pts.T).T + inv[:3, 3]
    zyx = np.rint(ijk[:, ::-1]).astype(int)
    if shape_zyx is not None:
        inside = np.all((zyx >= 0) & (zyx < np.asarray(shape_zyx)), axis=1)
        zyx = zyx[inside]
    return zyx


def zyx_to_ras(indices_zyx, geometry: VolumeGeometry) -> np.ndarray:
    """RAS coordinates (n, 3) of voxel centres given as (z, y, x) indices (n, 3)."""
    zyx = np.asarray(indices_zyx, dtype=np.float64).reshape(-1, 3)
    m = ijk_to_ras(geometry)
    return (m[:3, :3] @ zyx[:, ::-1].T).T + m[:3, 3]


# ----------------------------------------------------------------------------------------- image data

_VTK_TYPES = {np.dtype(np.bool_): vtk.VTK_UNSIGNED_CHAR}


def image_data_from_array(array_zyx: np.ndarray) -> vtk.vtkImageData:
    """A vtkImageData (origin 0, spacing 1: geometry lives in the node) holding a copy of ``array_zyx``."""
    a = np.asarray(array_zyx)
    if a.ndim != 3:
        raise ValueError(f"a volume needs a 3D (z, y, x) array, got shape {a.shape}")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    elif a.dtype == np.float16:
        a = a.astype(np.float32)
    image = vtk.vtkImageData()
    image.SetDimensions(a.shape[2], a.shape[1], a.shape[0])
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(a).ravel(), deep=True)
    scalars.SetName("ImageScalars")
    image.GetPointData().SetScalars(scalars)
    return image


def array_from_image_data(image: vtk.vtkImageData) -> np.ndarray:
    """A (z, y, x) copy of a single-component vtkImageData, or (z, y, x, c) for c components."""
    if image is None or image.GetPointData().GetScalars() is None:
        raise InputError("the volume holds no image data")
    nx, ny, nz = image.GetDimensions()
    arr = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    c = image.GetNumberOfScalarComponents()
    shape = (nz, ny, nx) if c == 1 else (nz, ny, nx, c)
    return np.array(arr.reshape(shape), copy=True)


def array_from_volume(volume_node) -> np.ndarray:
    """A (z, y, x) copy of a scalar volume node's voxels."""
    return array_from_image_data(volume_node.GetImageData())


def volume_from_array(scene, array_zyx: np.ndarray, geometry: VolumeGeometry, name: str,
                      node=None, class_name: str = "vtkMRMLScalarVolumeNode"):
    """A volume node in ``scene`` (``node`` updated in place, or a new ``class_name`` node) holding
    ``array_zyx`` on ``geometry``, with default display and storage nodes."""
    if node is None:
        node = scene.AddNewNodeByClass(class_name, name)
    image = image_data_from_array(array_zyx)
    was = node.StartModify()
    node.SetIJKToRASMatrix(_vtk_matrix(ijk_to_ras(geometry)))
    node.SetAndObserveImageData(image)
    node.EndModify(was)
    if node.GetScene() is not None and node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def set_volume_display(volume_node, color_node_id: str, window_level_min_max: Optional[Tuple[float, float]] = None,
                       lower_threshold: Optional[float] = None, interpolate: bool = False) -> None:
    """Colour map, fixed window/level (min, max) and an optional lower threshold below which voxels are
    transparent (zero background of maps and probability volumes)."""
    display = volume_node.GetDisplayNode()
    if display is None:
        volume_node.CreateDefaultDisplayNodes()
        display = volume_node.GetDisplayNode()
    was = display.StartModify()
    display.SetAndObserveColorNodeID(color_node_id)
    if window_level_min_max is not None and display.IsA("vtkMRMLScalarVolumeDisplayNode"):
        lo, hi = (float(v) for v in window_level_min_max)
        if hi <= lo:
            hi = lo + 1.0
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(lo, hi)
    if lower_threshold is not None and display.IsA("vtkMRMLScalarVolumeDisplayNode"):
        display.SetApplyThreshold(1)
        display.SetAutoThreshold(0)
        display.SetLowerThreshold(float(lower_threshold))
        display.SetUpperThreshold(float(np.finfo(np.float32).max))
    if hasattr(display, "SetInterpolate"):
        display.SetInterpolate(1 if interpolate else 0)
    display.EndModify(was)


def set_voxel_value_units(volume_node, ucum_code: str, meaning: str, quantity: str) -> None:
    """The volume's standard voxel-value quantity and unit (coded entries: UCUM for the unit), which Slicer
    shows wherever it shows units."""
    unit = slicer.vtkCodedEntry()
    unit.SetValueSchemeMeaning(ucum_code, "UCUM", meaning)
    volume_node.SetVoxelValueUnits(unit)
    what = slicer.vtkCodedEntry()
    what.SetValueSchemeMeaning(quantity, "99STROKELESION", quantity)
    volume_node.SetVoxelValueQuantity(what)


def available_color_id(scene, preferred: Iterable[str]) -> str:
    """The first of ``preferred`` colour node IDs present in the scene; the last one when none is (a
    built-in Slicer colour table, resolved when the scene opens in Slicer)."""
    preferred = list(preferred)
    for node_id in preferred:
        if scene is not None and scene.GetNodeByID(node_id) is not None:
            return node_id
    return preferred[-1]


# --------------------------------------------------------------------------------------------- sequences

def format_index(t: float) -> str:
    """A frame time as a sequence index value: seconds, at most 6 decimals, no trailing zeros."""
    s = f"{float(t):.6f}".rstrip("0").rstrip(".")
    return "0" if s in ("", "-0") else s


def sequence_from_series(scene, series: CTPSeries, name: str = "CTP", node=None):
    """A vtkMRMLSequenceNode of scalar volumes, one per frame, indexed by time in seconds."""
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
    else:
        node.RemoveAllDataNodes()
    node.SetIndexName("time")
    node.SetIndexUnit("s")
    node.SetIndexType(node.NumericIndex)
    matrix = _vtk_matrix(ijk_to_ras(series.geometry))
    frame = slicer.vtkMRMLScalarVolumeNode()
    for i in range(series.n_frames):
        frame.SetIJKToRASMatrix(matrix)
        frame.SetAndObserveImageData(image_data_from_array(series.data[i]))
        frame.SetName(f"{name} t={format_index(series.times_s[i])} s")
        node.SetDataNodeAtValue(frame, format_index(series.times_s[i]))
    node.SetAttribute("DataNodeClassName", "vtkMRMLScalarVolumeNode")
    return node


def browser_for_sequence(scene, sequence_node, name: Optional[str] = None):
    """A sequence browser for ``sequence_node`` (an existing one is reused) with its proxy volume."""
    browser = None
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode")):
        b = scene.GetNthNodeByClass(i, "vtkMRMLSequenceBrowserNode")
        if b.IsSynchronizedSequenceNode(sequence_node.GetID(), True):
            browser = b
            break
    if browser is None:
        browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", name or f"{sequence_node.GetName()} browser")
        browser.SetAndObserveMasterSequenceNodeID(sequence_node.GetID())
    browser.SetIndexDisplayFormat("%.1f")
    from AIFSelectorLib.mrml.scene import sequences_logic
    logic = sequences_logic(scene)
    if logic is not None:
        logic.UpdateProxyNodesFromSequences(browser)
    return browser


def frame_times_s(sequence_node) -> np.ndarray:
    """The sequence's index values as frame times in seconds."""
    unit = (sequence_node.GetIndexUnit() or "").strip().lower()
    scale = seconds_per_unit(unit, default_s=1.0)
    if scale is None:
        raise InputError(f"the sequence {sequence_node.GetName()!r} is indexed by {sequence_node.GetIndexName()!r} "
                         f"in {unit!r}: a CTP sequence needs time in s, ms, us or min")
    values = []
    for i in range(sequence_node.GetNumberOfDataNodes()):
        v = sequence_node.GetNthIndexValue(i)
        try:
            values.append(float(v))
        except ValueError:
            raise InputError(f"the sequence {sequence_node.GetName()!r} has a non-numeric index value {v!r}: "
                             "a CTP sequence needs frame times") from None
    return np.asarray(values) * scale


def series_from_sequence(sequence_node) -> CTPSeries:
    """A CTP series from a volume sequence: frames in time order, all on the first frame's grid."""
    n = sequence_node.GetNumberOfDataNodes()
    if n == 0:
        raise InputError(f"the sequence {sequence_node.GetName()!r} is empty")
    times = frame_times_s(sequence_node)
    order = np.argsort(times, kind="stable")
    first = sequence_node.GetNthDataNode(int(order[0]))
    if first is None or not first.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError(f"the sequence {sequence_node.GetName()!r} does not hold scalar volumes")
    ref = node_ijk_to_ras(first)
    frames = []
    for i in order:
        node = sequence_node.GetNthDataNode(int(i))
        if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
            raise InputError(f"frame {i} of {sequence_node.GetName()!r} is not a scalar volume")
        if not np.allclose(node_ijk_to_ras(node), ref, atol=1e-4):
            raise InputError(f"frame {i} of {sequence_node.GetName()!r} lies on another grid than frame 0: "
                             "register or resample the frames first")
        a = array_from_volume(node)
        if a.ndim != 3:
            raise InputError(f"frame {i} of {sequence_node.GetName()!r} has {a.shape[-1]} components: "
                             "a CTP frame is a scalar volume")
        if frames and a.shape != frames[0].shape:
            raise InputError(f"frame {i} of {sequence_node.GetName()!r} has shape {a.shape}, frame 0 {frames[0].shape}")
        frames.append(a)
    return CTPSeries(np.stack(frames), times[order], geometry_from_ijk_to_ras(ref))


def series_from_multivolume(volume_node, dt_s: Optional[float] = None) -> CTPSeries:
    """A CTP series from a multi-component volume (a 4D file loaded as a MultiVolume or vector volume):
    components are frames; times from the ``MultiVolume.FrameLabels`` attribute (ms, as the MultiVolume
    importer writes, unless ``MultiVolume.FrameIdentifyingDICOMTagUnits`` says otherwise) or ``dt_s``."""
    a = array_from_volume(volume_node)
    if a.ndim != 4:
        raise InputError(f"{volume_node.GetName()!r} is a 3D volume: give a sequence or a 4D volume")
    data = np.moveaxis(a, -1, 0)
    labels = volume_node.GetAttribute("MultiVolume.FrameLabels")
    if dt_s is not None:
        times = np.arange(data.shape[0]) * float(dt_s)
    elif labels:
        unit = (volume_node.GetAttribute("MultiVolume.FrameIdentifyingDICOMTagUnits") or "ms").strip().lower()
        times = np.array([float(v) for v in labels.split(",")]) * (seconds_per_unit(unit) or 1e-3)
    else:
        raise InputError(f"{volume_node.GetName()!r} has no frame times: give the frame interval")
    return CTPSeries(data, times, node_geometry(volume_node))


def series_from_node(node, dt_s: Optional[float] = None) -> CTPSeries:
    """A CTP series from a sequence node, a sequence browser (its master sequence) or a 4D volume."""
    if node is None:
        raise InputError("no input: select a CTP volume sequence")
    if node.IsA("vtkMRMLSequenceBrowserNode"):
        node = node.GetMasterSequenceNode()
        if node is None:
            raise InputError("the sequence browser has no sequence")
    if node.IsA("vtkMRMLSequenceNode"):
        series = series_from_sequence(node)
        if dt_s is not None:
            series = series.with_data(series.data, times_s=np.arange(series.n_frames) * float(dt_s))
        return series
    if node.IsA("vtkMRMLVolumeNode"):
        return series_from_multivolume(node, dt_s)
    raise InputError(f"{node.GetName()!r} ({node.GetClassName()}) is not a CTP series: select a volume sequence")


# -------------------------------------------------------------------------------------------------- tables

def storable(values) -> np.ndarray:
    """Float values rounded to the 6 significant digits a Slicer table keeps in its .tsv file, so that a
    saved and reloaded scene computes with exactly the numbers it computed with before saving."""
    values = np.asarray(values, dtype=np.float64).ravel()
    return np.array([float(f"{v:.6g}") for v in values], dtype=np.float64)


def table_from_columns(scene, columns: Dict[str, np.ndarray], name: str, node=None):
    """A table node holding float columns (all the same length, :func:`storable` precision) in order."""
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table = vtk.vtkTable()
    for col_name, values in columns.items():
        arr = numpy_support.numpy_to_vtk(storable(values), deep=True)
        arr.SetName(col_name)
        table.AddColumn(arr)
    was = node.StartModify()
    node.SetAndObserveTable(table)
    for col_name in columns:
        node.SetColumnUnitLabel(col_name, _unit_of(col_name))
    node.EndModify(was)
    return node


def _unit_of(column: str) -> str:
    return "s" if column.endswith("_s") else "HU" if column.endswith("_hu") else ""


def set_table_column(table_node, name: str, values) -> None:
    """Replaces (or adds) one float column of a table node."""
    table = table_node.GetTable()
    values = storable(values)
    if table.GetNumberOfRows() and len(values) != table.GetNumberOfRows():
        raise ValueError(f"column {name!r} has {len(values)} values, the table {table.GetNumberOfRows()} rows")
    arr = numpy_support.numpy_to_vtk(values, deep=True)
    arr.SetName(name)
    old = table.GetColumnByName(name)
    if old is not None:
        table.RemoveColumnByName(name)
    table.AddColumn(arr)
    table_node.SetColumnUnitLabel(name, _unit_of(name))
    table_node.Modified()


def columns_from_table(table_node) -> Dict[str, np.ndarray]:
    """Every column of a table node as a float array (text columns, as a reloaded .tsv may have, are parsed)."""
    out = {}
    table = table_node.GetTable()
    for c in range(table.GetNumberOfColumns()):
        col = table.GetColumn(c)
        name = col.GetName()
        if isinstance(col, vtk.vtkDataArray):
            out[name] = np.array(numpy_support.vtk_to_numpy(col), dtype=np.float64)
        else:
            vals = [col.GetValue(r) for r in range(col.GetNumberOfValues())]
            out[name] = np.array([float(v) if str(v).strip() not in ("", "nan") else np.nan for v in vals])
    return out
