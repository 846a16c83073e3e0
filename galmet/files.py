"""Files written whole or not at all.

A killed run must never leave half a checkpoint, image or table where a later run (or
another process) would take it for a complete one: every file galmet writes for others to
read goes through ``atomic_write`` or ``atomic_path``, which write a temporary file beside
the target and rename it into place (atomic on POSIX within one folder).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: Temporary files are ``.<name>.<random>.tmp`` beside their target: hidden, and easy to
#: sweep after a crash (``remove_stale``).
TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write; on a clean exit it replaces ``path``, else it is removed.

    For writers that want a file name (``torch.save``, ``savefig``, astropy's writers)::

        with atomic_path(out) as tmp:
            torch.save(state, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


def remove_stale(folder: str | Path) -> int:
    """Delete temporary files a killed run left in ``folder``; returns how many."""
    stale = list(Path(folder).glob(f".*{TMP_SUFFIX}"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return len(stale)
