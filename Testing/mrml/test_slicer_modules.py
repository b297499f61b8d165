"""The Slicer modules' files, checked without the Slicer application:

- both .ui files are valid Qt Designer XML, every widget name the module's Python uses (``self.ui.<name>``)
  exists in its .ui, every parameter binding (``SlicerParameterName``) names a parameter of the module's
  parameterNodeWrapper class with a widget type its GUI connector accepts, and every MRML widget gets the
  scene from the top-level qMRMLWidget;
- the parameterNodeWrapper classes declare exactly the Lib's parameters, with the same types and defaults;
- every module and Lib file parses as Python 3.9 (the oldest Slicer 5 Python) and avoids 3.10-only runtime
  annotations; the GUI-free MRML Logic never imports Qt, ``slicer.app`` or ScriptedLoadableModule, and
  torch is imported lazily;
- the modules have Module/Widget/Logic/Test classes, the Sample Data registration generates the phantom
  locally, and CMake builds every file and registers each module's test for ctest;
- the module files import (with Qt stand-ins) and their Logic classes run on a slicer-core scene.
"""
import ast
import re
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = ("AIFSelector", "StrokeLesion")
GUI_FREE_LIB_FILES = ("AIFSelector/AIFSelectorLib/mrml/conversion.py", "AIFSelector/AIFSelectorLib/mrml/scene.py",
                      "AIFSelector/AIFSelectorLib/mrml/aif_selector_logic.py", "AIFSelector/AIFSelectorLib/mrml/display.py",
                      "StrokeLesion/StrokeLesionLib/mrml/stroke_lesion_logic.py",
                      "StrokeLesion/StrokeLesionLib/mrml/scene_bundle.py")
QT_CLASSES = {"QWidget", "QLabel", "QPushButton", "QCheckBox", "QComboBox", "QSpinBox", "QDoubleSpinBox",
              "QProgressBar", "QLineEdit", "QTextEdit", "QSlider", "QTableView", "QGroupBox", "QFrame"}
MRML_WIDGETS = {"qMRMLNodeComboBox", "qSlicerMarkupsPlaceWidget", "qMRMLTableView"}
# GUI connectors of slicer.parameterNodeWrapper (guiConnectors.py): widget class -> parameter kinds it binds
CONNECTORS = {"QCheckBox": {"bool"}, "QPushButton": {"bool"}, "QSpinBox": {"int"}, "QSlider": {"int"},
              "QDoubleSpinBox": {"float"}, "ctkSliderWidget": {"float"}, "QComboBox": {"choice"},
              "QLineEdit": {"str"}, "QTextEdit": {"str"}, "qMRMLNodeComboBox": {"node"}}


def module_source(name):
    return (ROOT / name / f"{name}.py").read_text(encoding="utf-8")


def ui_tree(name):
    return ET.parse(ROOT / name / "Resources" / "UI" / f"{name}.ui")


def ui_widgets(name):
    return {w.get("name"): w for w in ui_tree(name).getroot().iter("widget")}


def wrapper_fields(name):
    """{field: kind} of the @parameterNodeWrapper class in the module file (kind: bool, int, float, str,
    choice or node), from its annotations."""
    tree = ast.parse(module_source(name))
    for cls in tree.body:
        if isinstance(cls, ast.ClassDef) and any(getattr(d, "id", None) == "parameterNodeWrapper" for d in cls.decorator_list):
            fields = {}
            for stmt in cls.body:
                if isinstance(stmt, ast.AnnAssign):
                    text = ast.unparse(stmt.annotation)
                    if text.startswith("vtkMRML"):
                        kind = "node"
                    elif "Choice(" in text:
                        kind = "choice"
                    else:
                        kind = re.search(r"\b(bool|int|float|str)\b", text).group(1)
                    fields[stmt.target.id] = kind
            return fields
    raise AssertionError(f"no @parameterNodeWrapper class in {name}.py")


# ------------------------------------------------------------------------------------------------ .ui

@pytest.mark.parametrize("name", MODULES)
def test_ui_is_valid_qt_designer_xml(name):
    root = ui_tree(name).getroot()
    assert root.tag == "ui" and root.get("version") == "4.0"
    assert root.findtext("class") == name
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == name
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "widget names must be unique"
    declared = {c.findtext("class"): c for c in root.iter("customwidget")}
    for c in declared.values():
        assert c.findtext("extends") and c.findtext("header", "").endswith(".h")
    for w in root.iter("widget"):
        cls = w.get("class")
        assert cls in QT_CLASSES or cls in declared, f"{cls} is neither a Qt class nor a declared custom widget"
    for layout in root.iter("layout"):
        assert layout.get("class") in ("QVBoxLayout", "QHBoxLayout", "QFormLayout", "QGridLayout")
        for item in layout.findall("item"):
            assert len(list(item)) == 1
        if layout.get("class") == "QFormLayout":
            cells = [(i.get("row"), i.get("column")) for i in layout.findall("item")]
            assert len(cells) == len(set(cells)) and all(r is not None for r, _ in cells)
    # every MRML widget receives the scene from the top-level widget's mrmlSceneChanged signal
    connected = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("sender") == name and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    mrml = {w.get("name") for w in root.iter("widget") if w.get("class") in MRML_WIDGETS}
    assert mrml and mrml <= connected


@pytest.mark.parametrize("name", MODULES)
def test_every_widget_the_module_uses_exists_in_its_ui(name):
    source = module_source(name)
    used = set(re.findall(r"\b(?:self|widget)\.ui\.(\w+)", source))
    assert used, "the module should use its .ui widgets"
    missing = used - set(ui_widgets(name))
    assert not missing, f"{name}.py uses widgets missing from {name}.ui: {sorted(missing)}"


@pytest.mark.parametrize("name", MODULES)
def test_parameter_bindings_name_wrapper_fields_with_compatible_widgets(name):
    fields = wrapper_fields(name)
    bound = {}
    for widget_name, w in ui_widgets(name).items():
        for p in w.findall("property"):
            if p.get("name") == "SlicerParameterName":
                assert p.get("stdset") == "0", "dynamic properties need stdset=0"
                bound[p.findtext("string")] = w.get("class")
    assert bound, "the .ui should bind widgets to the parameter node"
    for param, cls in bound.items():
        assert param in fields, f"{name}.ui binds {param!r}, not a parameter of the wrapper class"
        assert fields[param] in CONNECTORS[cls], f"{cls} cannot represent {param!r} ({fields[param]})"
    assert len(bound) == len(set(bound))


def test_wrapper_classes_declare_the_lib_parameters():
    from AIFSelectorLib.mrml import aif_selector_logic as aif_lib
    from StrokeLesionLib.mrml import stroke_lesion_logic as lesion_lib
    kinds = {bool: "bool", int: "int", float: "float", str: "str"}
    for name, lib in (("AIFSelector", aif_lib), ("StrokeLesion", lesion_lib)):
        fields = wrapper_fields(name)
        scalars = {k: v for k, v in fields.items() if v != "node"}
        assert set(scalars) == set(lib.PARAMETERS)
        assert {k for k, v in fields.items() if v == "node"} == set(lib.NODE_PARAMETERS)
        for k, kind in scalars.items():
            expected = kinds[type(lib.PARAMETERS[k])]
            assert kind == expected or (kind == "choice" and expected == "str"), k
        # defaults come from the Lib (P["name"]), so the two can never disagree
        tree = ast.parse(module_source(name))
        for stmt in ast.walk(tree):
            if isinstance(stmt, ast.AnnAssign) and stmt.target.id in scalars:
                assert ast.unparse(stmt.value) == f"P['{stmt.target.id}']", stmt.target.id


# ------------------------------------------------------------------------------------- Python version

def _python_files():
    files = [ROOT / m / f"{m}.py" for m in MODULES]
    for m in MODULES:
        files += sorted((ROOT / m / f"{m}Lib").glob("*.py"))
    return files


@pytest.mark.parametrize("path", _python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_code_parses_as_python_3_9(path):
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path), feature_version=(3, 9))
    future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__"
                 and any(a.name == "annotations" for a in n.names) for n in tree.body)
    if future:
        return
    # X | Y in annotations evaluated at definition time (signatures, module and class attributes) fails on 3.9
    annotations = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            annotations += [a.annotation for a in node.args.args + node.args.kwonlyargs + node.args.posonlyargs]
            annotations.append(node.returns)
        if isinstance(node, (ast.Module, ast.ClassDef)):
            annotations += [s.annotation for s in node.body if isinstance(s, ast.AnnAssign)]
    for a in annotations:
        if a is not None and any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(a)):
            pytest.fail(f"{path.name}:{a.lineno}: 'X | Y' annotation needs Python 3.10 "
                        "(use Optional/Union or 'from __future__ import annotations')")


@pytest.mark.parametrize("relpath", GUI_FREE_LIB_FILES)
def test_mrml_logic_is_gui_free_and_imports_torch_lazily(relpath):
    source = (ROOT / relpath).read_text(encoding="utf-8")
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        for n in names:
            assert n.split(".")[0] not in ("qt", "ctk", "PythonQt"), f"{relpath} imports {n}"
            assert "ScriptedLoadableModule" not in n, f"{relpath} imports {n}"
    for node in ast.walk(tree):  # code, not docstrings: no slicer.app / slicer.util / slicer.modules GUI
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "slicer":
            assert node.attr not in ("app", "util", "qMRMLUtils"), f"{relpath} uses slicer.{node.attr}"
        if isinstance(node, ast.Name):
            assert not node.id.startswith("ScriptedLoadableModule"), f"{relpath} uses {node.id}"
    for node in tree.body:  # module level: no torch
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            assert not any(n.split(".")[0] == "torch" for n in names), f"{relpath} imports torch at module level"


# ------------------------------------------------------------------------------------ module structure

@pytest.mark.parametrize("name", MODULES)
def test_module_widget_logic_test_classes(name):
    tree = ast.parse(module_source(name))
    classes = {c.name: c for c in tree.body if isinstance(c, ast.ClassDef)}
    bases = {k: [ast.unparse(b) for b in c.bases] for k, c in classes.items()}
    assert "ScriptedLoadableModule" in bases[name]
    assert bases[f"{name}Widget"][:2] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert "ScriptedLoadableModuleLogic" in bases[f"{name}Logic"]
    assert "ScriptedLoadableModuleTest" in bases[f"{name}Test"]
    methods = {f.name for f in classes[f"{name}Test"].body if isinstance(f, ast.FunctionDef)}
    assert {"setUp", "runTest"} <= methods and any(m.startswith("test_") for m in methods)
    widget_methods = {f.name for f in classes[f"{name}Widget"].body if isinstance(f, ast.FunctionDef)}
    assert {"setup", "cleanup", "enter", "exit", "setParameterNode", "initializeParameterNode"} <= widget_methods
    source = module_source(name)
    assert f'loadUI(self.resourcePath("UI/{name}.ui"))' in source
    assert ".connectGui(self.ui)" in source and ".disconnectGui(" in source
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Import) and any(a.name == "torch" for a in n.names)]


def test_phantom_sample_data_is_generated_locally():
    source = module_source("AIFSelector")
    assert 'slicer.app.connect("startupCompleted()", registerSampleData)' in source
    call = source[source.index("registerCustomSampleDataSource("):]
    call = call[:call.index("\n    )")]
    assert "customDownloader=loadPhantomSample" in call
    assert "http" not in call and "checksums" not in call
    assert (ROOT / "AIFSelector" / "Resources" / "Icons" / "StrokePhantomCTP.png").is_file()
    assert "make_phantom(" in source[source.index("def loadPhantomSample"):]


def test_torch_is_installed_through_pytorchutils_with_a_confirmation():
    source = (ROOT / "AIFSelector" / "AIFSelectorLib" / "gui" / "installers.py").read_text(encoding="utf-8")
    body = source[source.index("def ensureTorch"):]
    assert "confirmOkCancelDisplay" in body and "import PyTorchUtils" in body
    assert body.index("confirmOkCancelDisplay") < body.index("installTorch(")
    runtime = source[source.index("def ensureAIFNetRuntime"):source.index("def ensureTorch")]
    # AIFNet's CPU runtime is offered first, with a confirmation; PyTorch after it
    assert runtime.index("confirmOkCancelDisplay") < runtime.index('pip_install("onnxruntime")')
    assert runtime.index('pip_install("onnxruntime")') < runtime.index("return ensureTorch(required=False)")
    assert "ensureAIFNetRuntime()" in module_source("AIFSelector")
    for name in ("AIFSelector", "StrokeLesion"):  # both Widgets share it, neither imports the other's module file
        assert "from AIFSelectorLib.gui.installers import" in module_source(name)
        assert "from AIFSelector import" not in module_source(name)


# ---------------------------------------------------------------------------------------------- CMake

def test_cmake_builds_the_extension_and_registers_the_module_tests():
    top = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    for needed in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                   "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})",
                   'set(EXTENSION_DEPENDS "PyTorch")'):
        assert needed in top, needed
    for var in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert re.search(rf"set\({var} \"[^\"]+\"\)", top), var
    assert top.index("find_package(Slicer") < top.index("add_subdirectory(AIFSelector)") \
        < top.index("add_subdirectory(StrokeLesion)") < top.index("Slicer_EXTENSION_GENERATE_CONFIG")
    assert (ROOT / "Resources" / "Icons" / "StrokeLesion.png").is_file()
    for url in re.findall(r"https://raw\.githubusercontent\.com/[^/]+/[^/]+/main/(\S+?)[\s\"]", top):
        assert (ROOT / url).is_file(), f"CMakeLists.txt links {url}, which the repository does not hold"
    for name in MODULES:
        text = (ROOT / name / "CMakeLists.txt").read_text(encoding="utf-8")
        assert f"set(MODULE_NAME {name})" in text
        assert "slicerMacroBuildScriptedModule(" in text
        assert "${MODULE_NAME}Lib/*.py" in text and "${MODULE_NAME}.py" in text
        testing = text[text.index("if(BUILD_TESTING)"):]
        assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in testing[:testing.index("endif()")]
        resources = re.search(r"set\(MODULE_PYTHON_RESOURCES(.*?)\)", text, re.S).group(1).split()
        for r in resources:
            assert (ROOT / name / r.replace("${MODULE_NAME}", name)).is_file(), r
        assert (ROOT / name / "Testing" / "CMakeLists.txt").is_file()
        assert (ROOT / name / "Testing" / "Python" / "CMakeLists.txt").is_file()


# ------------------------------------------------------------------------ the module files, imported

class _Anything:
    """Stands in for any Qt/ctk object or class the module files touch at import time."""

    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        return _Anything()

    def __call__(self, *args, **kwargs):
        return _Anything()

    def __or__(self, other):
        return self


@pytest.fixture
def module_files(monkeypatch):
    """The two module files imported as Slicer would, with Qt, ctk, ScriptedLoadableModule and the
    parameterNodeWrapper replaced by stand-ins (slicer itself is slicer-core)."""
    slicer = pytest.importorskip("slicer")
    for qt_name in ("qt", "ctk"):
        stand_in = types.ModuleType(qt_name)
        stand_in.__getattr__ = lambda attr: _Anything
        monkeypatch.setitem(sys.modules, qt_name, stand_in)
    slm = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            super().__init__()
            self.moduleName = self.__class__.__name__[:-5]

    for cls in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleTest"):
        setattr(slm, cls, type(cls, (), {}))
    slm.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", slm)

    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.wrapped = {}

    def parameterNodeWrapper(cls):
        pnw.wrapped[cls.__name__] = cls

        def wrap(node):
            return types.SimpleNamespace(node=node, cls=cls)
        return wrap

    pnw.parameterNodeWrapper = parameterNodeWrapper
    pnw.Choice = lambda choices: ("Choice", tuple(choices))
    pnw.WithinRange = lambda lo, hi: ("WithinRange", lo, hi)
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", pnw)
    for name in MODULES:
        monkeypatch.syspath_prepend(str(ROOT / name))
        monkeypatch.delitem(sys.modules, name, raising=False)
    import AIFSelector
    import StrokeLesion
    yield types.SimpleNamespace(AIFSelector=AIFSelector, StrokeLesion=StrokeLesion, wrapped=pnw.wrapped,
                                slicer=slicer)
    for name in MODULES:
        sys.modules.pop(name, None)


def test_module_files_import_and_their_logic_runs_on_a_scene(module_files):
    from typing import get_type_hints
    from AIFSelectorLib.mrml import aif_selector_logic as aif_lib
    from AIFSelectorLib.mrml.scene import StandaloneScene
    from AIFSelectorLib.phantom.case import make_phantom
    from StrokeLesionLib.mrml import stroke_lesion_logic as lesion_lib

    for cls_name, lib in (("AIFSelectorParameterNode", aif_lib), ("StrokeLesionParameterNode", lesion_lib)):
        cls = module_files.wrapped[cls_name]
        hints = get_type_hints(cls, include_extras=True)
        for k, default in lib.PARAMETERS.items():
            assert getattr(cls, k) == default and type(getattr(cls, k)) is type(default), k
            assert hints[k] is type(default) or getattr(hints[k], "__origin__", None) is type(default), k
        for k in lib.NODE_PARAMETERS:
            assert hints[k].__name__.startswith("vtkMRML") and module_files.slicer.vtkMRMLNode in hints[k].__mro__

    case = make_phantom(seed=3, shape_zyx=(4, 64, 64), n_frames=30)
    with StandaloneScene() as env:
        logic = module_files.AIFSelector.AIFSelectorLogic(env.scene)
        assert logic.moduleName == "AIFSelector"
        logic.addSeries(case.series, "CTP")
        logic.selectInputFunctions("classic")
        logic.computeMaps()
        wrapped = logic.getParameterNode()
        assert wrapped.node is logic.parameterNode() and wrapped.cls.__name__ == "AIFSelectorParameterNode"
        lesion = module_files.StrokeLesion.StrokeLesionLogic(env.scene)
        assert lesion.setInputsFromAIFSelector()
        seg = lesion.run()
        assert np.array_equal(lesion.segmentMask(seg, "penumbra"), lesion.computeMasks()[1])
        assert lesion.getParameterNode().cls.__name__ == "StrokeLesionParameterNode"
