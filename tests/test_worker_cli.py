"""``galmet worker`` refuses, in one line, to start where every chunk would fail."""

from __future__ import annotations

import pytest
import torch

from galmet.cli import main


@pytest.fixture
def env(monkeypatch, tiny_model, tmp_path):
    monkeypatch.setenv("GALMET_BROKER_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("GALMET_MODEL", str(tiny_model))
    monkeypatch.setenv("GALMET_DATABASE_URL", f"sqlite:///{tmp_path}/w.sqlite3")
    return monkeypatch


def test_no_broker_is_a_one_line_error(env, capsys):
    env.delenv("GALMET_BROKER_URL")
    assert main(["worker"]) == 2
    assert "set GALMET_BROKER_URL" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_one_line_error(env, capsys):
    env.setenv("GALMET_DEVICE", "cuda")
    assert main(["worker"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_a_model_that_does_not_load_is_a_one_line_error(env, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    env.setenv("GALMET_MODEL", str(bad))
    assert main(["worker"]) == 2
    err = capsys.readouterr().err
    assert "cannot load the model" in err and len(err.strip().splitlines()) == 1


def test_concurrency_must_be_positive(env, capsys):
    assert main(["worker", "--concurrency", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err
