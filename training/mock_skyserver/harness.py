"""Serving an ASGI app with uvicorn on a socket of our own: the mock SkyServer in tests and
benchmarks (and galmet's own app beside it), and the port of ``galmet mock-skyserver``."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready socket bound to (host, port); we bind it ourselves so that port 0
    works and a busy port is an OSError we can report."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets that say so, and
    # without it every answer waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


@contextlib.contextmanager
def serve_in_thread(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    release: str = "dr17",
    lifespan: str = "off",
) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread; yield its SkyServer base URL.

    The URL includes the release, like the real one (``http://127.0.0.1:54321/dr17``), so
    it can be handed to ``SkyServerClient(base_url)`` as is; ``release=""`` gives the bare
    address (for serving other apps, e.g. galmet's own, with ``lifespan="on"``).
    ``port=0`` picks a free port. The server is stopped on exit; requests still hanging
    are cut after a second.
    """
    sock = bind_socket(host, port)
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", lifespan=lifespan, access_log=False, timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run,
        kwargs={"sockets": [sock]},
        daemon=True,
        name=f"mock-skyserver:{bound_port}",
    )
    thread.start()
    try:
        for _ in range(6000):  # an app's lifespan may load a model first
            if server.started or not thread.is_alive():
                break
            threading.Event().wait(0.01)
        if not server.started:
            raise RuntimeError("mock SkyServer did not start")
        yield f"http://{host}:{bound_port}" + (f"/{release}" if release else "")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
