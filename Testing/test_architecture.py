"""The import rules of docs/architecture.md, checked on the source (every import statement, top level or
inside a function): stages import only earlier stages, the phantom is imported by no stage, MRML/Qt/torch
stay where they belong, the engine never imports StrokeLesionLib, nothing imports training; and no import
circle, no package folder of more than 12 modules, no module of more than 600 lines."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"AIFSelectorLib": ROOT / "AIFSelector" / "AIFSelectorLib",
            "StrokeLesionLib": ROOT / "StrokeLesion" / "StrokeLesionLib"}
MODULE_FILES = [ROOT / "AIFSelector" / "AIFSelector.py", ROOT / "StrokeLesion" / "StrokeLesion.py"]

ENGINE_ORDER = ["core", "io", "prepare", "input_functions", "deconvolution", "maps", "thresholds"]
"""The stages of AIFSelectorLib in pipeline order; 'core' is errors, constants, ctp_series."""
SUPPORT = {"models": ["core", "io"]}
"""Packages beside the stages and what they may import."""
CASE_ORDER = ["metrics", "lesion_models", "case", "mrml", "web", "cli"]
"""StrokeLesionLib's layers: each imports only earlier ones (and the engine)."""
MODEL_PACKAGES = ("AIFSelectorLib.models", "AIFSelectorLib.input_functions.aifnet",
                  "StrokeLesionLib.lesion_models.pseudodwi", "StrokeLesionLib.lesion_models.sean",
                  "StrokeLesionLib.lesion_models.xnet")
PHANTOM_USERS = ("StrokeLesionLib.cli", "StrokeLesionLib.case.truth_comparison")
"""The demo: the only package code that imports the phantom."""
MRML_PACKAGES = ("AIFSelectorLib.mrml", "StrokeLesionLib.mrml", "AIFSelectorLib.gui", "StrokeLesionLib.web")
WEB_PACKAGES = ("StrokeLesionLib.web",)
GUI_PACKAGES = ("AIFSelectorLib.gui",)
"""The Qt helpers both module Widgets share (background work, installers): the only package code with Qt."""


def modules():
    """{dotted name: path} of every module of both packages."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            found[".".join([package] + parts)] = path
    return found


def imports(path: Path):
    """(imported module, line, at top level) of every import statement (from-imports name the module;
    'from X import y' also yields X.y, which may be a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, node.lineno, id(node) in top))
            out += [(f"{node.module}.{a.name}", node.lineno, id(node) in top) for a in node.names]
    return out


MODULES = modules()


def internal(name: str):
    """The project module an import refers to (the longest known prefix), or None."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        candidate = ".".join(parts[:k])
        if candidate in MODULES:
            return candidate
    return None


def stage_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "AIFSelectorLib":
        if len(parts) == 1 or parts[1] in ("errors", "constants", "ctp_series"):
            return "core"
        return parts[1]
    return parts[1] if len(parts) > 1 else "package"


def edges():
    for module, path in MODULES.items():
        for name, line, top in imports(path):
            target = internal(name)
            yield module, name, target, line, top


def test_module_files_do_not_import_each_other():
    for path in MODULE_FILES:
        for name, line, _ in imports(path):
            assert name.split(".")[0] not in ("AIFSelector", "StrokeLesion"), f"{path.name}:{line} imports {name}"


def test_engine_stages_import_only_earlier_stages():
    bad = []
    for module, name, target, line, _ in edges():
        if not module.startswith("AIFSelectorLib") or target is None or not target.startswith("AIFSelectorLib"):
            continue
        src, dst = stage_of(module), stage_of(target)
        if src in ENGINE_ORDER and dst in ENGINE_ORDER and ENGINE_ORDER.index(dst) > ENGINE_ORDER.index(src):
            bad.append(f"{module}:{line} ({src}) imports {target} ({dst})")
        if src in SUPPORT and dst in ENGINE_ORDER and dst not in SUPPORT[src]:
            bad.append(f"{module}:{line} ({src}) imports {target} ({dst})")
        if src in ENGINE_ORDER and dst == "mrml":
            bad.append(f"{module}:{line} (a stage) imports {target} (mrml)")
    assert not bad, "\n".join(sorted(set(bad)))


def test_strokelesionlib_layers_and_direction():
    bad = []
    for module, name, target, line, _ in edges():
        if target is None:
            continue
        if module.startswith("AIFSelectorLib") and target.startswith("StrokeLesionLib"):
            bad.append(f"{module}:{line} imports {target}: the engine never imports StrokeLesionLib")
        if module.startswith("StrokeLesionLib") and target.startswith("StrokeLesionLib"):
            src, dst = stage_of(module), stage_of(target)
            if src in CASE_ORDER and dst in CASE_ORDER and CASE_ORDER.index(dst) > CASE_ORDER.index(src):
                bad.append(f"{module}:{line} ({src}) imports {target} ({dst})")
    assert not bad, "\n".join(sorted(set(bad)))


def test_phantom_and_training_are_imported_by_no_stage():
    bad = []
    for module, path in MODULES.items():
        for name, line, _ in imports(path):
            if name.split(".")[0] == "training":
                bad.append(f"{module}:{line} imports {name}: nothing imports training")
            target = internal(name)
            if target and target.startswith("AIFSelectorLib.phantom") and not module.startswith(
                    "AIFSelectorLib.phantom") and module not in PHANTOM_USERS:
                bad.append(f"{module}:{line} imports {target}: only the demo imports the phantom")
    assert not bad, "\n".join(sorted(set(bad)))


def test_mrml_qt_and_torch_stay_where_they_belong():
    bad = []
    for module, path in MODULES.items():
        for name, line, top in imports(path):
            root = name.split(".")[0]
            if root in ("qt", "ctk") and not module.startswith(GUI_PACKAGES):
                bad.append(f"{module}:{line} imports {root}: only the module files and gui/ import Qt/CTK")
            if root in ("slicer", "vtk", "vtkmodules") and not module.startswith(MRML_PACKAGES):
                bad.append(f"{module}:{line} imports {root}: only the mrml packages touch MRML")
            if root.startswith(("trame", "wslink")) and not module.startswith(WEB_PACKAGES):
                bad.append(f"{module}:{line} imports {root}: only the web app (StrokeLesionLib/web) uses trame")
            if root.startswith(("trame", "wslink")) and top:
                bad.append(f"{module}:{line} imports {root} at the top: import it lazily (trame is optional)")
            if root == "torch" and top and not module.startswith(MODEL_PACKAGES):
                bad.append(f"{module}:{line} imports torch at the top: only the network packages do")
            target = internal(name)
            if top and target and target.startswith(MODEL_PACKAGES) and not module.startswith(MODEL_PACKAGES) \
                    and not target.startswith(("AIFSelectorLib.models.device", "AIFSelectorLib.models.weights",
                                               "AIFSelectorLib.models.config_json")):
                bad.append(f"{module}:{line} imports the network package {target} at the top: import it lazily")
    assert not bad, "\n".join(sorted(set(bad)))


def test_no_import_circle():
    graph = {}
    for module, name, target, line, _ in edges():
        if target and target != module:
            graph.setdefault(module, set()).add(target)
    state, circles = {}, []

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                circles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"
    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not circles, "\n".join(circles)


def test_folders_and_modules_stay_small():
    big_folders = [f"{folder}: {n} modules" for folder, n in
                   ((f, len([p for p in f.glob("*.py") if p.name != "__init__.py"]))
                    for f in {p.parent for p in MODULES.values()}) if n > 12]
    long_modules = [f"{p}: {n} lines" for p, n in ((p, len(p.read_text(encoding="utf-8").splitlines())) for p in
                    list(MODULES.values()) + MODULE_FILES) if n > 600]
    assert not big_folders and not long_modules, "\n".join(big_folders + long_modules)


@pytest.mark.parametrize("path", MODULE_FILES, ids=lambda p: p.name)
def test_module_files_import_only_the_logic(path):
    """The Slicer module files stay thin: what they import of the packages is Logic, display and devices."""
    for name, line, _ in imports(path):
        target = internal(name)
        if target:
            assert target.startswith(("AIFSelectorLib.mrml", "StrokeLesionLib.mrml", "AIFSelectorLib.models.device",
                                      "AIFSelectorLib.gui",
                                      "AIFSelectorLib.io.ctp_io", "AIFSelectorLib.errors",
                                      "AIFSelectorLib.phantom", "AIFSelectorLib.input_functions.policy",
                                      "AIFSelectorLib.constants")), f"{path.name}:{line} imports {target}"


SLICER_PYTHON = (3, 9)
"""The oldest Python a supported Slicer bundles (Slicer 5.6); the package itself needs 3.10+ (torch)."""


@pytest.mark.parametrize("path", sorted(list(MODULES.values()) + MODULE_FILES), ids=lambda p: p.name)
def test_module_sources_parse_for_the_slicer_python(path):
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=SLICER_PYTHON)
