"""Where the networks run: CUDA or the CPU, found without importing torch until it is needed, and a
thread count on the CPU that makes their results independent of the machine."""
import contextlib
import importlib.util
import os
from typing import Iterator, Optional

from AIFSelectorLib.errors import InputError


def torch_available() -> bool:
    """True when torch can be imported (checked without importing it)."""
    return importlib.util.find_spec("torch") is not None


def nvidia_driver_present() -> bool:
    """A cheap test for a CUDA-capable GPU (its driver), so that torch is not imported in vain."""
    if os.path.exists("/proc/driver/nvidia/version"):
        return True
    system_root = os.environ.get("SystemRoot")
    return bool(system_root) and os.path.exists(os.path.join(system_root, "System32", "nvcuda.dll"))


def cuda_if_present() -> Optional[str]:
    """'cuda' when an NVIDIA driver, torch and a CUDA device are present, else None (the CPU: numpy for the
    deconvolution, torch on the CPU for the networks). torch is imported only when the driver is there."""
    if not nvidia_driver_present() or not torch_available():
        return None
    import torch
    return "cuda" if torch.cuda.is_available() else None


def resolve_device(device: Optional[str] = "auto"):
    """The torch.device for 'auto' (or None: CUDA when present, else CPU), 'cpu' or 'cuda'; 'cuda' without
    CUDA is an InputError."""
    import torch
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA device is available")
    if device not in ("cpu", "cuda"):
        raise InputError(f"unknown device {device!r} (auto, cpu or cuda)")
    return torch.device(device)


def release_freed_memory() -> None:
    """Returns the memory a network run freed to the system (glibc's malloc_trim; nothing elsewhere). onnxruntime
    frees its buffers tile by tile, but the C heap keeps the pages, so the resident memory stayed at the
    networks' peak through the maps and the writing after them."""
    import ctypes
    try:
        ctypes.CDLL(None).malloc_trim(0)  # the process's own symbols: glibc's on Linux
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, Windows, musl)
        pass


INFERENCE_CPU_THREADS = 2
"""torch threads for network inference on the CPU, the same on every machine. A convolution's sums are reduced in
an order that depends on the thread count, so its float results do (by ~1e-5), and the AIF taken from them then
moves the maps' thresholded decisions; a fixed count makes every model output the same whatever the machine's
cores or OMP_NUM_THREADS (tested bit for bit). Two, not one: on the 2-core machine AIFNet on the demo phantom takes
1.7-1.9 s instead of 2.5 s, while one core alone runs the two threads in 2.9 s, with the same bits."""


@contextlib.contextmanager
def thread_invariant(device) -> Iterator[None]:
    """Runs torch on the CPU with INFERENCE_CPU_THREADS threads (restored after), so that the result does
    not depend on the machine's core count; nothing changes on CUDA."""
    import torch
    if torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(INFERENCE_CPU_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)
