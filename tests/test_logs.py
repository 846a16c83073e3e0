"""Log lines carry a job's ids as fields: JSON keys, or key=value after a plain line."""

from __future__ import annotations

import json
import logging

from galmet.app.core.logs import JsonFormatter, PlainFormatter


def record(**extra) -> logging.LogRecord:
    rec = logging.LogRecord("galmet.jobs", logging.INFO, __file__, 1, "chunk %d done", (3,), None)
    rec.__dict__.update(extra)
    return rec


def test_json_lines_keep_the_extra_fields():
    line = json.loads(JsonFormatter().format(record(job_id="abc", chunk=3)))
    assert line["message"] == "chunk 3 done" and line["level"] == "INFO"
    assert line["job_id"] == "abc" and line["chunk"] == 3 and line["logger"] == "galmet.jobs"


def test_plain_lines_append_key_value_fields():
    text = PlainFormatter().format(record(job_id="abc", chunk=3))
    assert text == "INFO galmet.jobs: chunk 3 done job_id=abc chunk=3"
    assert PlainFormatter().format(record()) == "INFO galmet.jobs: chunk 3 done"
