"""The calibration page: a small bottle app on 127.0.0.1 (one HTML file with inline CSS and script, the sample images
from the run, a JSON API). Served single-threaded by the standard library's WSGI server, so answers are taken one at
a time, in order."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from importlib.resources import files
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import bottle

from loratune.calibrate.session import Session
from loratune.errors import LoratuneError


def make_app(session: Session) -> bottle.Bottle:
    app = bottle.Bottle()
    page = files("loratune.calibrate").joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/")
    def index() -> str:
        bottle.response.set_header("Cache-Control", "no-store")
        return page

    @app.get("/api/state")
    def state() -> dict[str, Any]:
        return session.state()

    @app.post("/api/answer")
    def answer() -> dict[str, Any]:
        body = bottle.request.json or {}
        try:
            session.answer(str(body.get("left")), str(body.get("right")), str(body.get("answer")))
        except LoratuneError as err:
            bottle.response.status = 409
            return {"error": str(err), **session.state()}
        return session.state()

    @app.get("/image/<index:int>/<cell:int>")
    def image(index: int, cell: int) -> Any:
        path = session.image(index, cell)
        if path is None:
            return bottle.HTTPError(404, "no such image")
        return bottle.static_file(path.name, root=str(path.parent))

    return app


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No line per request on the terminal."""


def serve(session: Session, port: int, say: Callable[[str], None]) -> None:
    """Serve until Ctrl-C, then raise ``KeyboardInterrupt`` (run from the main thread: it owns SIGINT); ``port`` 0
    picks a free one (the printed URL names it)."""
    try:
        server = make_server("127.0.0.1", port, make_app(session), handler_class=_Quiet)
    except OSError as err:
        raise LoratuneError(f"--port {port}: cannot listen on 127.0.0.1 ({err.strerror})") from None
    say(f"calibrate: http://127.0.0.1:{server.server_port}/ — answers go to {session.path} (Ctrl-C stops; "
        "run again to resume)")
    # Ctrl-C only sets a flag, checked between requests: a KeyboardInterrupt raised while a response is being sent
    # would be swallowed by wsgiref's error handler (the server would log it and carry on serving).
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    server.timeout = 0.2
    try:
        while not stop.is_set():
            server.handle_request()
    finally:
        signal.signal(signal.SIGINT, previous)
        server.server_close()
    raise KeyboardInterrupt
