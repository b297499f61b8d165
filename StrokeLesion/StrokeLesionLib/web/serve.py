"""`strokelesion serve`: the web app on a local trame server, until SIGTERM or Ctrl-C.

It binds 127.0.0.1 unless told otherwise (the page can open and export a patient's images: exposing it on
a network is a deliberate choice, with --host). When the server listens it prints one line,
``serving http://HOST:PORT/``; SIGTERM or SIGINT stop it within seconds, removing its temporary files.
"""
import asyncio
import os
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Optional

from AIFSelectorLib.errors import InputError

STOP_GRACE_S = 10.0
"""Seconds a stopping server gets to close its connections before the process ends regardless."""


def trame_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("trame_slicer") is not None


def serve(source: Optional[str] = None, host: str = "127.0.0.1", port: int = 8080,
          exports: Optional[str] = None, device: Optional[str] = None, max_upload_mb: float = 1024.0) -> int:
    """Runs the app until stopped; returns the exit status (0, or 143 after SIGTERM)."""
    if not trame_available():
        raise InputError("the web app needs trame-slicer: pip install 'strokelesion[web]' "
                         "(see README, 'Web app')")
    if source is not None and not Path(source).exists():
        raise InputError(f"{source} does not exist")
    from trame.app import get_server

    from StrokeLesionLib.web.app import StrokeLesionWebApp
    from StrokeLesionLib.web.uploads import limit_websocket_messages

    limit_websocket_messages(max_upload_mb)
    server = get_server("strokelesion", client_type="vue3")
    app = StrokeLesionWebApp(server, source, Path(exports) if exports else None, device, max_upload_mb)
    status = {"code": 0}

    def stop(signum):
        status["code"] = 128 + signum
        app.tasks.shutdown()
        asyncio.ensure_future(server.stop())
        timer = threading.Timer(STOP_GRACE_S, lambda: (shutil.rmtree(app.work_folder, ignore_errors=True),
                                                       os._exit(status["code"])))  # its temporary files go too
        timer.daemon = True
        timer.start()

    def ready(**_):
        loop = asyncio.get_event_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop, signum)
        print(f"serving http://{host}:{server.port}/", flush=True)

    server.controller.on_server_ready.add(ready)
    argv, sys.argv = sys.argv, sys.argv[:1]  # trame reads its own options from sys.argv: give it none
    try:
        server.start(host=host, port=port, open_browser=False, show_connection_info=False, timeout=0,
                     disable_logging=True)
    finally:
        sys.argv = argv
        app.close()
    return status["code"]
