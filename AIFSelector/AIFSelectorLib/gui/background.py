"""Background work with a progress bar and Cancel, for the module Widgets: the work runs in a thread, a
QTimer polls it, so the GUI never freezes."""
import logging
import threading

import qt
import slicer

from AIFSelectorLib.mrml.aif_selector_logic import Cancelled


class BackgroundTask:
    """Runs ``work(progress)`` (pure numpy, no MRML or Qt) in a worker thread and polls it with a QTimer,
    so the GUI never freezes; ``done(task)`` runs on the main thread with ``task.result`` or ``task.error``.
    ``progress(fraction, message)`` raises Cancelled once ``cancel()`` was called."""

    def __init__(self, work, done, label, progressBar=None, statusLabel=None):
        self.work, self.done, self.label = work, done, label
        self.progressBar, self.statusLabel = progressBar, statusLabel
        self.fraction, self.message = 0.0, label
        self.result, self.error = None, None
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, name=f"StrokeLesion: {label}", daemon=True)
        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.connect("timeout()", self._poll)

    def progress(self, fraction, message=""):
        if self._cancelled:
            raise Cancelled()
        self.fraction = float(fraction)
        if message:
            self.message = message

    def cancel(self):
        self._cancelled = True

    @property
    def running(self):
        return self._thread.is_alive() or self._timer.isActive()

    def start(self):
        self._thread.start()
        self._timer.start()
        self._poll()

    def _run(self):
        try:
            self.result = self.work(self.progress)
        except BaseException as e:  # noqa: BLE001 - reported on the main thread
            self.error = e

    def _poll(self):
        if self.progressBar is not None:
            self.progressBar.setValue(int(round(100 * self.fraction)))
            self.progressBar.setFormat(f"{self.label}: {self.message} %p%")
        if self._thread.is_alive():
            return
        self._timer.stop()
        self.done(self)


def runInBackground(widget, work, done, label):
    """Starts a BackgroundTask with the widget's progress bar and Cancel button; refuses a second one."""
    task = getattr(widget, "_task", None)
    if task is not None and task.running:
        slicer.util.warningDisplay("Wait for the running computation to finish, or cancel it.")
        return None

    def finished(t):
        widget.ui.progressBar.setVisible(False)
        widget.ui.cancelButton.setVisible(False)
        widget._setBusy(False)
        if isinstance(t.error, Cancelled):
            widget.ui.statusLabel.setText(f"{label}: cancelled")
            return
        if t.error is not None:
            logging.error("%s failed: %s", label, t.error, exc_info=t.error)
            slicer.util.errorDisplay(f"{label} failed: {t.error}")
            return
        with slicer.util.tryWithErrorDisplay(f"{label} failed.", waitCursor=True):
            done(t)

    widget.ui.progressBar.setValue(0)
    widget.ui.progressBar.setVisible(True)
    widget.ui.cancelButton.setVisible(True)
    widget._setBusy(True)
    widget._task = BackgroundTask(work, finished, label, widget.ui.progressBar, widget.ui.statusLabel)
    widget._task.start()
    return widget._task
