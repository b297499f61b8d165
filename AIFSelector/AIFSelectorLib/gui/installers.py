"""Installing what the modules need on first use, after asking: Python packages Slicer may lack, AIFNet's CPU
runtime (onnxruntime), and PyTorch through the PyTorch extension."""
import importlib
import importlib.util

import slicer

from AIFSelectorLib.models.device import torch_available


def ensurePythonDependencies():
    """scipy, SimpleITK and pynrrd (bundled with recent Slicer) and nibabel (the NIfTI reader); installs
    what is missing after asking."""
    packages = {"scipy": "scipy", "SimpleITK": "SimpleITK", "nrrd": "pynrrd", "nibabel": "nibabel"}
    missing = [pip for module, pip in packages.items() if importlib.util.find_spec(module) is None]
    if not missing:
        return True
    if not slicer.util.confirmOkCancelDisplay(f"AIF Selector needs {', '.join(missing)}. Install now?"):
        return False
    with slicer.util.WaitCursor():
        for m in missing:
            slicer.util.pip_install(m)
    importlib.invalidate_caches()
    return True


def ensureAIFNetRuntime() -> bool:
    """A runtime for AIFNet, installed on first use after a confirmation: onnxruntime (about 15 MB; AIFNet's CPU
    runtime, on the networks' shipped ONNX export), else PyTorch (:func:`ensureTorch`). Returns False when
    neither is there: the selection policy then uses the classic selector."""
    if importlib.util.find_spec("onnxruntime") is not None or torch_available():
        return True
    if slicer.util.confirmOkCancelDisplay(
            "AIFNet runs on the CPU through onnxruntime (a download of about 15 MB), which is not installed. "
            "Install it now?\n\nCancel offers PyTorch instead.", windowTitle="AIF Selector"):
        with slicer.util.WaitCursor():
            try:
                slicer.util.pip_install("onnxruntime")
            except Exception as e:  # noqa: BLE001 - no network, no wheel for this platform: PyTorch is offered
                slicer.util.errorDisplay(f"onnxruntime could not be installed: {e}")
        importlib.invalidate_caches()
        if importlib.util.find_spec("onnxruntime") is not None:
            return True
    return ensureTorch(required=False)


def ensureTorch(required: bool) -> bool:
    """PyTorch for AIFNet, installed on first use through the PyTorch extension after a confirmation.
    Returns True when torch can be imported; False means: use the classic selector (or stop, if required)."""
    if torch_available():
        return True
    question = ("AIFNet needs PyTorch, which is not installed. Install it now through the PyTorch extension "
                "(a large download; CUDA is used when present)?")
    if not required:
        question += "\n\nCancel uses the classic AIF selector instead."
    if not slicer.util.confirmOkCancelDisplay(question, windowTitle="AIF Selector"):
        return False
    try:
        import PyTorchUtils
    except ImportError:
        slicer.util.errorDisplay("Install the 'PyTorch' extension from the Extensions Manager, restart Slicer, "
                                 "and select the AIF again.")
        return False
    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    if not torchLogic.torchInstalled():
        with slicer.util.WaitCursor():
            torch = torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=">=2.0")
        if torch is None:
            slicer.util.errorDisplay("PyTorch could not be installed; the classic selector will be used.")
            return False
    importlib.invalidate_caches()
    return torch_available()
