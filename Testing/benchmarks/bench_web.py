"""The web app's responsiveness on this machine, in a real headless Chromium (a script, not collected by
pytest):

1. seconds from starting `strokelesion serve CTP` to the first rendered view of the CTP in the page
   (the server's start, the browser's page load, reading the series, the first remote-rendered image);
2. frames per second that reach the page while the user scrolls through slices with the mouse wheel over an
   ~800 x 800 slice view (every new image of the view counted in the page as it arrives).

    python Testing/benchmarks/bench_web.py [--seconds 8]
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "web"))

from browser import WebApp, browser_missing  # noqa: E402

from AIFSelectorLib.io.volume_io import write_series_nifti  # noqa: E402
from AIFSelectorLib.phantom.case import make_phantom  # noqa: E402

COUNT_FRAMES = """
const img = arguments[0];
window.__frames = 0;
new MutationObserver(() => { window.__frames += 1; }).observe(img, {attributes: true, attributeFilter: ['src']});
"""

SCROLL = """
const area = document.querySelector('#views .remote-controlled-area');
const r = area.getBoundingClientRect();
const step = (i) => area.dispatchEvent(new WheelEvent('wheel', {deltaY: (Math.floor(i / 6) % 2 ? -120 : 120),
    clientX: r.left + r.width / 2, clientY: r.top + r.height / 2, bubbles: true}));
let i = 0;
window.__scroll = setInterval(() => step(i++), 40);
"""


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=8.0, help="how long to scroll")
    args = p.parse_args()
    missing = browser_missing()
    if missing:
        print(f"cannot run: {missing}")
        return 1
    work = Path(tempfile.mkdtemp(prefix="bench-web-"))
    ctp = write_series_nifti(work / "ctp.nii.gz", make_phantom(seed=0).series)
    # the drawer is 470 px wide; the view gets the rest of the window, less the toolbar and the probe line
    t0 = time.perf_counter()
    with WebApp(ctp, work / "run", window=(470 + 800 + 2, 800 + 100 + 145)) as web:
        web.wait_idle("case_loaded")
        web.wait(lambda: web.view_element() is not None, 60, "the view")

        def rendered():
            pixels = web.view_pixels()
            return pixels.size and float(np.mean(pixels > 40)) > 0.05  # the head, not an empty view

        web.wait(rendered, 60, "the first rendered CTP")
        first_view_s = time.perf_counter() - t0
        left, top, w, h = web.view_rect()
        web.driver.execute_script(COUNT_FRAMES, web.view_element())
        slices = set()
        web.driver.execute_script(SCROLL)
        end = time.time() + args.seconds
        while time.time() < end:  # the slices the view went through (the app publishes its slice position)
            slices.add(round(web.displayed_slice_ras_z(), 2))
            time.sleep(0.1)
        web.driver.execute_script("clearInterval(window.__scroll)")
        frames = web.driver.execute_script("return window.__frames")
    print(f"machine: {Path('/proc/cpuinfo').read_text().count('processor')} CPU cores, no GPU used")
    print(f"serve -> first rendered view of the CTP: {first_view_s:.1f} s "
          f"(server start to listening {web.started_s:.1f} s)")
    print(f"scrolling slices on a {w:.0f} x {h:.0f} view: {frames} frames in {args.seconds:.0f} s = "
          f"{frames / args.seconds:.1f} frames/s, through {len(slices)} slice positions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
