"""A real headless Chromium driving a real `strokelesion serve` (the browser tests and the web benchmark).

``WebApp`` starts the server as its own process (port 0: any free port), and a Chromium through
Debian's chromedriver with selenium. It reads the app's state through the page's trame client
(``window.trame.state``), clicks controls by their ``id``, and maps a voxel to the pixel of the review
view where it is drawn, from the view's XY-to-RAS matrix that the app publishes.
"""
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMEDRIVER = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")


def browser_missing() -> str:
    """Why no browser test can run here ('' when one can)."""
    import importlib.util
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install '.[test]')"
    if importlib.util.find_spec("trame_slicer") is None:
        return "trame-slicer is not installed (pip install '.[web]')"
    if not any(Path(p).exists() for p in CHROMIUM) or not any(Path(p).exists() for p in CHROMEDRIVER):
        return "no chromium + chromium-driver (apt-get install chromium chromium-driver)"
    return ""


def strokelesion_command():
    exe = Path(sys.executable).with_name("strokelesion")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "StrokeLesionLib.cli"]


class WebApp:
    """``with WebApp(source, tmp_path) as web: ...``: a server on ``source`` and a browser on its page."""

    def __init__(self, source, workdir, window=(1500, 950), extra_args=()):
        self.source, self.workdir = source, Path(workdir)
        self.window = window
        self.extra_args = list(extra_args)
        self.server = self.driver = None
        self.started_s = None

    def __enter__(self):
        from selenium import webdriver
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "server.log"
        t0 = time.perf_counter()
        args = strokelesion_command() + ["serve"] + ([str(self.source)] if self.source else []) + \
            ["--port", "0", "--exports", str(self.workdir / "exports")] + self.extra_args
        self.server = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=open(self.log_path, "w"), text=True,
                                       env={**os.environ, "MPLBACKEND": "Agg"})
        line = self.server.stdout.readline()
        match = re.search(r"http://\S+", line)
        if not match:
            raise RuntimeError(f"the server did not start: {line!r}; log:\n{self.server_log()}")
        self.url = match.group(0)
        self.started_s = time.perf_counter() - t0
        options = webdriver.ChromeOptions()
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                    f"--window-size={self.window[0]},{self.window[1]}", "--force-device-scale-factor=1"):
            options.add_argument(arg)
        options.binary_location = next(p for p in CHROMIUM if Path(p).exists())
        service = webdriver.ChromeService(next(p for p in CHROMEDRIVER if Path(p).exists()))
        self.driver = webdriver.Chrome(service=service, options=options)
        self.driver.get(self.url)
        return self

    def __exit__(self, *exc):
        if self.driver is not None:
            self.driver.quit()
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(30)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()

    def server_log(self) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""
        return "\n".join(l for l in text.splitlines() if "Traceback" in l or "Error" in l or "error" in l)[-3000:]

    # ------------------------------------------------------------------------------------------ state

    def state(self, key):
        return self.driver.execute_script(
            "return window.trame && window.trame.state ? window.trame.state.get(arguments[0]) : null", key)

    def set_state(self, key, value):
        self.driver.execute_script("window.trame.state.set(arguments[0], arguments[1])", key, value)

    def download(self, url_path):
        """The bytes the server sends for ``url_path`` (e.g. /exports/...), or None when it answers 404."""
        import urllib.error
        import urllib.request
        try:
            with urllib.request.urlopen(self.url.rstrip("/") + url_path, timeout=30) as response:
                return response.read()
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    def wait(self, condition, timeout_s=180, what="condition"):
        end = time.time() + timeout_s
        while time.time() < end:
            value = condition()
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; error shown: "
                             f"{self.state('error_message')!r}; server log: {self.server_log()}")

    def wait_idle(self, key, timeout_s=300):
        """Waits until ``key`` is truthy and no task runs; fails on an error message."""
        def ready():
            error = self.state("error_message")
            if error:
                raise AssertionError(f"the page shows an error: {error}")
            return self.state(key) and not self.state("busy")
        return self.wait(ready, timeout_s, key)

    def click(self, element_id, attempts=5):
        """Clicks the control ``element_id``; the page re-renders as state changes, so an element found a
        moment ago may be gone: it is looked up again (and waited for until the page shows it)."""
        from selenium.common.exceptions import StaleElementReferenceException
        for attempt in range(attempts):
            try:
                element = self.find(f"#{element_id}")
                self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
                element.click()
                return
            except StaleElementReferenceException:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.2)

    def find(self, css, timeout_s=60):
        """The first element matching ``css``, waiting until the page has rendered it."""
        from selenium.common.exceptions import NoSuchElementException
        from selenium.webdriver.common.by import By

        def present():
            try:
                return self.driver.find_element(By.CSS_SELECTOR, css)
            except NoSuchElementException:
                return None
        return self.wait(present, timeout_s, f"the element {css!r} on the page")

    # ------------------------------------------------------------------------------------------ views

    def view_element(self, timeout_s=30):
        """The review view's image element (the largest remote-rendered image on the page). After a layout
        change the views are rebuilt, so it waits until one is on the page with a non-zero size."""
        return self.wait(lambda: self.driver.execute_script("""
            let best = null, area = 0;
            for (const el of document.querySelectorAll('#views img, #views canvas, #views video')) {
                const r = el.getBoundingClientRect();
                if (r.width * r.height > area) { area = r.width * r.height; best = el; }
            }
            return best;"""), timeout_s, "a rendered view on the page")

    def view_rect(self, attempts=5):
        """(left, top, width, height) of the review view in page pixels; looked up again when the page
        re-rendered it between the lookup and the measurement."""
        from selenium.common.exceptions import JavascriptException, StaleElementReferenceException
        for attempt in range(attempts):
            try:
                return self.driver.execute_script(
                    "const r = arguments[0].getBoundingClientRect(); return [r.left, r.top, r.width, r.height];",
                    self.view_element())
            except (JavascriptException, StaleElementReferenceException):
                if attempt == attempts - 1:
                    raise
                time.sleep(0.3)

    def screenshot(self, path=None):
        """The page as an (h, w, 3) uint8 array (and a PNG file at ``path``)."""
        from PIL import Image
        png = self.driver.get_screenshot_as_png()
        if path is not None:
            Path(path).write_bytes(png)
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))

    def view_pixels(self, path=None):
        """The review view's part of a screenshot, (h, w, 3) uint8."""
        left, top, w, h = (int(round(v)) for v in self.view_rect())
        return self.screenshot(path)[top:top + h, left:left + w]

    def page_xy_of_ras(self, ras):
        """Page pixel (x, y) where the review view draws RAS point ``ras`` (mm), via its XY-to-RAS matrix."""
        m = np.asarray(self.state("view_xy_to_ras")["Red"], float).reshape(4, 4)
        xy, *_ = np.linalg.lstsq(m[:3, :2], np.asarray(ras, float) - m[:3, 3], rcond=None)
        left, top, w, h = self.view_rect()
        return left + xy[0], top + (h - xy[1])

    def displayed_slice_ras_z(self):
        m = np.asarray(self.state("view_xy_to_ras")["Red"], float).reshape(4, 4)
        return m[2, 3]

    def click_at(self, x, y):
        """A real mouse click at page pixel (x, y)."""
        from selenium.webdriver.common.actions.action_builder import ActionBuilder
        actions = ActionBuilder(self.driver)
        actions.pointer_action.move_to_location(int(round(x)), int(round(y)))
        actions.pointer_action.click()
        actions.perform()

    def drag(self, points):
        """Mouse down at the first page pixel, through the others, up at the last (a paint stroke)."""
        from selenium.webdriver.common.actions.action_builder import ActionBuilder
        actions = ActionBuilder(self.driver)
        x, y = points[0]
        actions.pointer_action.move_to_location(int(x), int(y)).pointer_down()
        for x, y in points[1:]:
            actions.pointer_action.move_to_location(int(x), int(y))
            actions.pointer_action.pause(0.05)
        actions.pointer_action.pointer_up()
        actions.perform()


def copy_ctp(src, dst_dir) -> Path:
    dst = Path(dst_dir) / Path(src).name
    shutil.copyfile(src, dst)
    return dst
