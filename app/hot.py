"""Hot answers: the most recent cached answers of a process, kept encoded in memory.

A cached answer costs two database look-ups (the object identified at the position, then
the prediction), each a thread hop with an ORM session, and an encoding of the response
model; measured, that was most of its time. Every part of a cached answer is fixed once
written (cache rows are inserted once, never updated) and the model is fixed for the life of
the process, so the encoded JSON can be kept and sent again as it is. The key holds the model
version and TTA level all the same, so an answer can never outlive the model it came from.

Bounded: the least recently used answer goes first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class HotAnswers:
    """A least-recently-used map from a normalised request to its encoded answer."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._answers: OrderedDict[Hashable, bytes] = OrderedDict()

    def get(self, key: Hashable) -> bytes | None:
        body = self._answers.get(key)
        if body is not None:
            self._answers.move_to_end(key)
        return body

    def put(self, key: Hashable, body: bytes) -> None:
        if self.size <= 0:
            return
        self._answers[key] = body
        self._answers.move_to_end(key)
        while len(self._answers) > self.size:
            self._answers.popitem(last=False)

    def __len__(self) -> int:
        return len(self._answers)
