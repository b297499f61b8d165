"""The MRML scene the Logic classes work on, inside and outside the Slicer application.

Inside Slicer the scene is ``slicer.mrmlScene`` and the module logics (Sequences, Segmentations, Markups ...)
already exist. Outside it (CI, the command line's ``--scene``), :class:`StandaloneScene` builds a real
``vtkMRMLScene`` from ``slicer-core`` with the logics the modules rely on, and saves or opens Slicer scene
bundles (``.mrb``).

GUI-free: imports ``slicer`` (vtkMRML classes) only, never Qt, ``slicer.app`` or ScriptedLoadableModule.
"""
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Optional

import slicer

_STANDALONE = {}
"""id(scene) -> StandaloneScene, so Logic classes find the logics of a scene built here."""

_CONVERTERS_REGISTERED = False


def register_segmentation_converters() -> None:
    """Binary labelmap <-> closed surface converter rules, once per process (Slicer does this at startup)."""
    global _CONVERTERS_REGISTERED
    if _CONVERTERS_REGISTERED:
        return
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
    factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())
    _CONVERTERS_REGISTERED = True


def default_scene():
    """``slicer.mrmlScene`` inside the Slicer application; outside it, an error naming what to pass."""
    scene = getattr(slicer, "mrmlScene", None)
    if scene is None:
        raise RuntimeError("no MRML scene: outside the Slicer application pass one, e.g. "
                           "StandaloneScene().scene")
    return scene


def sequences_logic(scene):
    """The Sequences module logic of ``scene`` (Slicer's, or the standalone scene's), or None."""
    modules = getattr(slicer, "modules", None)
    if modules is not None and hasattr(modules, "sequences"):
        return modules.sequences.logic()
    env = _STANDALONE.get(id(scene))
    return env.sequences if env is not None else None


class StandaloneScene:
    """A vtkMRMLScene with an application logic and the Colors, Sequences, Markups and Segmentations
    logics, as the Slicer application sets them up (what ``slicer-core`` needs to behave like Slicer).

    Keep the object alive as long as the scene is used: it owns the logics.
    """

    def __init__(self, with_views: bool = True):
        register_segmentation_converters()
        self.scene = slicer.vtkMRMLScene()
        self._tmp = tempfile.mkdtemp(prefix="strokelesion-mrml-")
        self.app = slicer.vtkMRMLApplicationLogic()
        self.app.SetTemporaryPath(self._tmp)
        # built-in colour tables only: an empty share/ColorFiles folder (slicer-core ships no colour files)
        os.makedirs(os.path.join(self._tmp, "share", "ColorFiles"))
        self.app.SetHomeDirectory(self._tmp)
        self.app.SetShareDirectory("share")
        self.app.SetMRMLScene(self.scene)
        self.colors = slicer.vtkSlicerColorLogic()
        self.sequences = slicer.vtkSlicerSequencesLogic()
        self.markups = slicer.vtkSlicerMarkupsLogic()
        self.segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
        for logic in (self.colors, self.sequences, self.markups, self.segmentations):
            logic.SetMRMLApplicationLogic(self.app)
            logic.SetMRMLScene(self.scene)
        if with_views:
            self.add_views()
        _STANDALONE[id(self.scene)] = self

    def add_views(self) -> None:
        """The three slice views' composite nodes, a crosshair and a layout node, as Slicer's main window
        has them, so that layer assignments and the layout are saved with the scene."""
        scene = self.scene
        for name in ("Red", "Yellow", "Green"):
            if not _singleton(scene, "vtkMRMLSliceCompositeNode", name):
                node = scene.CreateNodeByClass("vtkMRMLSliceCompositeNode")
                node.SetSingletonTag(name)
                node.SetLayoutName(name)
                scene.AddNode(node)
                node.UnRegister(None)
        if scene.GetFirstNodeByClass("vtkMRMLCrosshairNode") is None:
            node = scene.CreateNodeByClass("vtkMRMLCrosshairNode")
            node.SetSingletonTag("default")
            scene.AddNode(node)
            node.UnRegister(None)

    def close(self) -> None:
        _STANDALONE.pop(id(self.scene), None)
        self.scene.Clear(1)
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ scene bundles

    def save_bundle(self, path) -> Path:
        """Saves the scene as a Slicer data bundle (.mrb) atomically: written beside ``path`` under a
        temporary name and renamed into place, so a reader never sees half a bundle."""
        return save_bundle(self.scene, self.app, path)

    def open_bundle(self, path) -> None:
        """Loads a .mrb into this scene (what File / Add Data does with it in Slicer)."""
        work = tempfile.mkdtemp(prefix="mrb-", dir=self._tmp)
        if not self.app.OpenSlicerDataBundle(str(Path(path).absolute()), work):
            raise RuntimeError(f"cannot open the scene bundle {path}")


def _singleton(scene, class_name: str, tag: str):
    for i in range(scene.GetNumberOfNodesByClass(class_name)):
        node = scene.GetNthNodeByClass(i, class_name)
        if node.GetSingletonTag() == tag:
            return node
    return None


def add_default_storage_nodes(scene) -> None:
    """Storage nodes for every storable node that has none (what Save does before writing a bundle)."""
    nodes = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
    for node in nodes:
        if node.IsA("vtkMRMLStorableNode") and node.GetStorageNode() is None and node.GetSaveWithScene():
            node.AddDefaultStorageNode()


def already_compressed(path: Path) -> bool:
    """True for a file whose content is compressed already (gzip, PNG, or an NRRD whose header declares a
    compressed encoding, as Slicer's storage nodes write them): a bundle stores it as it is, instead of spending
    seconds deflating it again (a phantom's 100 MB CTP sequence: 2.5 s of the web app's 6.6 s export)."""
    name = path.name.lower()
    if name.endswith((".gz", ".png", ".zip", ".mrb")):
        return True
    if name.endswith((".nrrd", ".nhdr")):
        with open(path, "rb") as f:
            header = f.read(8192).split(b"\n\n", 1)[0].lower()
        return any(b"encoding: " + e in header for e in (b"gzip", b"gz", b"bzip2", b"bz2"))
    return False


def save_bundle(scene, app, path) -> Path:
    """Writes ``scene`` to the .mrb ``path`` atomically (temporary folder, zip beside the target, rename)."""
    path = Path(path).absolute()  # Slicer saves bundles only into full paths
    if path.suffix.lower() != ".mrb":
        raise ValueError(f"a Slicer scene bundle must end in .mrb, got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    add_default_storage_nodes(scene)
    work = Path(tempfile.mkdtemp(prefix=f".{path.stem}.", dir=path.parent))
    try:
        bundle_dir = work / path.stem
        bundle_dir.mkdir()
        if not app.SaveSceneToSlicerDataBundleDirectory(str(bundle_dir), None):
            raise RuntimeError(f"Slicer could not save the scene into {bundle_dir}")
        tmp_zip = work / (path.name + ".partial")
        with zipfile.ZipFile(tmp_zip, "w", zipfile.ZIP_DEFLATED) as z:
            for root, _, files in os.walk(bundle_dir):
                for name in sorted(files):
                    f = Path(root) / name
                    z.write(f, f.relative_to(work).as_posix(),
                            zipfile.ZIP_STORED if already_compressed(f) else zipfile.ZIP_DEFLATED)
        os.replace(tmp_zip, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


def open_bundle(path) -> StandaloneScene:
    """A new standalone scene holding the content of the .mrb ``path``."""
    env = StandaloneScene(with_views=False)
    env.open_bundle(path)
    return env


def find_parameter_node(scene, module_name: str):
    """A module's singleton parameter node (vtkMRMLScriptedModuleNode) in ``scene``, or None; found as
    ScriptedLoadableModuleLogic finds it (singleton tag, else module name)."""
    node = scene.GetSingletonNode(module_name, "vtkMRMLScriptedModuleNode")
    if node is None:
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode")):
            candidate = scene.GetNthNodeByClass(i, "vtkMRMLScriptedModuleNode")
            if candidate.GetModuleName() == module_name:
                node = candidate
                break
    if node is not None and node.GetModuleName() != module_name:
        node.SetModuleName(module_name)  # a scene close clears it
    return node


def get_parameter_node(scene, module_name: str):
    """The module's parameter node, created (singleton, as Slicer's module logics make it) when missing."""
    node = find_parameter_node(scene, module_name)
    if node is None:
        node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.SetSingletonTag(module_name)
        node.SetName(scene.GenerateUniqueName(module_name))
        node.SetModuleName(module_name)
        scene.AddNode(node)
        node.UnRegister(None)
    return node


def serialise_parameter(value) -> str:
    """A parameter value as parameterNodeWrapper writes it (booleans True/False, numbers str())."""
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def deserialise_parameter(text: str, default):
    """A parameter string read back with the type of ``default``."""
    if isinstance(default, bool):
        return text == "True"
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            return int(float(text))
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            return default
    return text


class ParameterNodeLogic:
    """Scene and parameter-node access shared by the modules' Logic classes (the part of Slicer's
    ScriptedLoadableModuleLogic they need, usable without the application). A subclass sets ``moduleName``
    and ``parameters`` (name -> default; the default's type is the parameter's type); node parameters are
    node references under their own names."""

    moduleName = ""
    parameters: dict = {}

    def __init__(self, scene=None):
        self._scene = scene

    @property
    def scene(self):
        return self._scene if self._scene is not None else default_scene()

    def parameterNode(self):
        """The module's parameter node in the scene (created with defaults when missing)."""
        node = get_parameter_node(self.scene, self.moduleName)
        self.setDefaultParameters(node)
        return node

    getParameterNode = parameterNode

    @classmethod
    def setDefaultParameters(cls, node) -> None:
        for name, default in cls.parameters.items():
            if not node.HasParameter(name):
                node.SetParameter(name, serialise_parameter(default))

    def getParameter(self, name: str):
        """A scalar parameter with its type (see ``parameters``)."""
        return deserialise_parameter(self.parameterNode().GetParameter(name), self.parameters[name])

    def setParameter(self, name: str, value) -> None:
        if name not in self.parameters:
            raise KeyError(f"unknown {self.moduleName} parameter {name!r}")
        self.parameterNode().SetParameter(name, serialise_parameter(type(self.parameters[name])(value)))

    def getNode(self, name: str):
        """A node parameter, or None."""
        return self.parameterNode().GetNodeReference(name)

    def setNode(self, name: str, node) -> None:
        """Sets a node parameter the way parameterNodeWrapper does (an empty parameter marks it set)."""
        p = self.parameterNode()
        p.SetParameter(name, "")
        p.SetNodeReferenceID(name, node.GetID() if node is not None else None)


class AdoptedScene:
    """A scene built by another host outside Slicer (the web app's trame-slicer application), registered
    with its application and Sequences logics so that the Logic classes and :func:`save_bundle` find them
    as they find a :class:`StandaloneScene`'s. ``release()`` unregisters it; the host owns the scene."""

    def __init__(self, scene, app, sequences):
        register_segmentation_converters()
        self.scene, self.app, self.sequences = scene, app, sequences
        self._tmp = tempfile.mkdtemp(prefix="strokelesion-mrml-")
        if not app.GetTemporaryPath():
            app.SetTemporaryPath(self._tmp)
        _STANDALONE[id(scene)] = self

    def save_bundle(self, path) -> Path:
        return save_bundle(self.scene, self.app, path)

    def release(self) -> None:
        if _STANDALONE.get(id(self.scene)) is self:
            del _STANDALONE[id(self.scene)]
        shutil.rmtree(self._tmp, ignore_errors=True)


def standalone_for(scene) -> Optional[StandaloneScene]:
    """The StandaloneScene that owns ``scene``, if it was built here."""
    return _STANDALONE.get(id(scene))
