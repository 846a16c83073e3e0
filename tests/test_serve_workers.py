"""``galmet serve --workers 2``: two server processes on one port, one shared SQLite database."""

from __future__ import annotations

import concurrent.futures
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import galaxy

API = "/api/v1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_processes(pid: int) -> list[int]:
    """The processes uvicorn's supervisor ``pid`` started to serve (multiprocessing spawns)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if ppid == pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def wait_until_up(url: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        try:
            if httpx.get(f"{url}{API}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"galmet serve --workers 2 did not come up in {seconds} s")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="counts processes in /proc")
def test_two_server_processes_share_the_database(tiny_model, mock_skyserver, mock_sky, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = os.environ | {
        "GALMET_MODEL": str(tiny_model),
        "GALMET_SKYSERVER_URL": mock_skyserver,
        "GALMET_DATABASE_URL": f"sqlite:///{tmp_path}/shared.sqlite3",
        "GALMET_DEVICE": "cpu",
        "GALMET_TTA": "1",
        "GALMET_CACHE_DIR": str(tmp_path),
    }
    args = [sys.executable, "-m", "galmet", "serve", "--workers", "2", "--port", str(port)]
    proc = subprocess.Popen(
        args + ["--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until_up(url, proc)
        assert len(server_processes(proc.pid)) == 2
        positions = [galaxy(mock_sky, i) for i in range(4)]

        def ask(pos):
            r = httpx.get(f"{url}{API}/predict", params={"ra": pos[0], "dec": pos[1]}, timeout=60)
            assert r.status_code == 200, r.text
            return r.json()

        # Many requests at once over new connections: both processes answer and write.
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            first = list(pool.map(ask, positions * 6))
            again = list(pool.map(ask, positions * 6))
        for answers in (first, again):
            by_position = {}
            for pos, a in zip(positions * 6, answers, strict=True):
                by_position.setdefault(pos, set()).add(a["oh_p50"])
            assert all(len(values) == 1 for values in by_position.values())
        # Whichever process computed an answer, the other finds it in the shared database.
        assert all(a["cached"] for a in again)
    finally:
        proc.terminate()
        proc.wait(30)
    assert server_processes(proc.pid) == []


def test_zero_workers_is_a_one_line_error(capsys):
    from galmet.cli import main

    assert main(["serve", "--workers", "0"]) == 2
    assert capsys.readouterr().err.strip() == "galmet: error: --workers must be 1 or more, not 0"
