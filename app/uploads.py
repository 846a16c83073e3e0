"""Reading an upload without holding more than the cap in memory."""

from __future__ import annotations

from galmet.images import BadImage


async def read_capped(upload, limit: int) -> bytes:
    """Read an upload, refusing (413) as soon as it exceeds ``limit`` bytes."""
    chunks, total = [], 0
    while chunk := await upload.read(1 << 16):
        total += len(chunk)
        if total > limit:
            raise BadImage(f"upload larger than the limit of {limit} bytes", status=413)
        chunks.append(chunk)
    return b"".join(chunks)
