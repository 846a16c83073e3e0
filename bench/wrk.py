"""Load generation with Debian's ``wrk`` (``apt-get install -y wrk``), for the bench scripts.

wrk is written in C and drives tens of thousands of requests per second from one thread, so
on loopback it is not the bottleneck of a Python server (an httpx client would be). A
request other than a plain GET (a JSON body, a multipart upload) is a small Lua script that
sets wrk's method, body and headers.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


@dataclass
class WrkResult:
    """What one wrk run measured."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # non-2xx/3xx answers plus socket errors (connect, read, write, timeout)

    def row(self) -> dict:
        return {
            "req_per_s": round(self.requests_per_s, 1),
            "p50_ms": round(self.p50_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
            "requests": self.requests,
            "errors": self.errors,
        }


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk (Debian/Ubuntu)")
    return path


def lua_string(data: bytes) -> str:
    """``data`` as a Lua string literal (decimal escapes, so any bytes survive)."""
    return '"' + "".join(f"\\{b}" for b in data) + '"'


def request_script(method: str, body: bytes, content_type: str) -> str:
    """A wrk Lua script sending ``method`` with ``body`` of ``content_type``."""
    return (
        f'wrk.method = "{method}"\n'
        f'wrk.headers["Content-Type"] = "{content_type}"\n'
        f"wrk.body = {lua_string(body)}\n"
    )


def multipart(field: str, filename: str, data: bytes, content_type: str) -> tuple[bytes, str]:
    """A multipart/form-data body holding one file, and its Content-Type header."""
    boundary = "galmetbenchboundary7d1a"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def run_wrk(
    url: str,
    seconds: float = 10,
    connections: int = 50,
    threads: int = 1,
    script: str | None = None,
) -> WrkResult:
    """Load ``url`` with wrk for ``seconds`` at ``connections`` open connections."""
    args = [require_wrk(), f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    args += ["--timeout", "10s"]
    with tempfile.TemporaryDirectory() as tmp:
        if script is not None:
            lua = Path(tmp) / "request.lua"
            lua.write_text(script)
            args += ["-s", str(lua)]
        out = subprocess.run(
            args + [url], capture_output=True, text=True, timeout=seconds + 60, check=True
        ).stdout
    return parse(out)


def parse(out: str) -> WrkResult:
    """The figures in wrk's ``--latency`` report."""

    def latency(percent: str) -> float:
        m = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        if m is None:
            raise ValueError(f"no {percent}% latency in wrk's output:\n{out}")
        return float(m.group(1)) * _UNITS[m.group(2)]

    rate = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    total = re.search(r"^\s+(\d+) requests in", out, re.M)
    if rate is None or total is None:
        raise ValueError(f"unexpected wrk output:\n{out}")
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(g) for g in m.groups())
    return WrkResult(
        float(rate.group(1)), latency("50"), latency("99"), int(total.group(1)), errors
    )
