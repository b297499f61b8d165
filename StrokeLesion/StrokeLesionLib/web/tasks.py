"""Long work of the web app (AIF selection, maps, the lesion model) off the server's event loop.

A task is two functions: ``compute(progress)`` runs on one worker thread and touches no MRML node;
``apply(result)`` runs back on the event loop, where the scene lives. ``progress(fraction, message)``
updates the page and raises :class:`Cancelled` once the user pressed Cancel, so the computation stops at
its next progress report and nothing is applied. Every error becomes one line in the page (the traceback
goes to the server's log), and the app keeps working.
"""
import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

from AIFSelectorLib.errors import InputError

APPLY_DELAY_S = 0.05
"""Seconds the event loop runs between a step's worker half and its main-thread half (``apply``), so that the
state sends queued meanwhile (the last progress line) reach the page before a long ``apply`` (the export's scene
bundle) holds the loop."""

log = logging.getLogger("strokelesion.web")


class Cancelled(Exception):
    """The user cancelled the running task."""


def one_line(error: BaseException) -> str:
    """The message a page shows for ``error``: InputError's text as it is (it names the problem), other
    errors with their type, never a traceback."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if isinstance(error, InputError) else f"{type(error).__name__}: {text}"


class TaskRunner:
    """Runs one task at a time for an app whose state has the keys busy, progress, progress_text,
    status_message and error_message."""

    def __init__(self, state):
        self._state = state
        self._cancel = threading.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="strokelesion-task")

    def cancel(self) -> None:
        if self._state.busy:
            self._cancel.set()
            with self._state:
                self._state.progress_text = "cancelling ..."

    def shutdown(self) -> None:
        self._cancel.set()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def report_error(self, error: BaseException, what: str = "") -> None:
        if not isinstance(error, InputError):
            log.exception("%s failed", what or "a step", exc_info=error)
        with self._state:
            self._state.error_message = (f"{what}: " if what else "") + one_line(error)

    def reported(self, method):
        """A control's (synchronous) method or a state-change handler, whose errors become a message in the
        page."""
        def wrapped(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except Exception as e:  # noqa: BLE001
                self.report_error(e)
        return wrapped

    async def run(self, label: str, compute: Callable, apply: Callable, done: Optional[str] = None) -> bool:
        """Runs ``compute`` then ``apply``; returns True when both ran. One task at a time."""
        state = self._state
        if state.busy:
            with state:
                state.error_message = f"{label}: wait for the running task to finish (or cancel it)"
            return False
        loop = asyncio.get_running_loop()
        self._cancel.clear()
        with state:
            state.busy, state.progress, state.progress_text = True, 0, label
            state.error_message = ""

        def report(fraction, message):
            with state:
                state.progress = round(100 * float(fraction))
                state.progress_text = f"{label}: {message}" if message else label

        def progress(fraction: float, message: str = "") -> None:
            if self._cancel.is_set():
                raise Cancelled()
            loop.call_soon_threadsafe(report, fraction, message)

        ok = False
        try:
            result = await loop.run_in_executor(self._executor, compute, progress)
            if self._cancel.is_set():
                raise Cancelled()
            await asyncio.sleep(APPLY_DELAY_S)  # the page gets the last progress line before apply holds the loop
            before = state.status_message
            apply(result)
            ok = True
            if state.status_message == before:  # apply may have said something more precise
                with state:
                    state.status_message = done or f"{label}: done"
        except Cancelled:
            with state:
                state.status_message = f"{label}: cancelled, nothing changed"
        except Exception as e:  # noqa: BLE001 - every failure is a message in the page
            self.report_error(e, label)
        finally:
            with state:
                state.busy, state.progress, state.progress_text = False, 0, ""
        return ok
