"""CUDA hazards a CPU machine can catch (issue: the GPU worker and GPU training must start
right on a GPU host). Each test fails on the code before its fix."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from galmet import device as device_module
from galmet.errors import GalmetError
from tests.test_jobs_celery import broker  # noqa: F401  (the Redis fixture)

ROOT = Path(__file__).resolve().parents[1]
FORK_PROBE = """
import os, torch
pid = os.fork()
if pid == 0:
    print("child bad fork:", torch.cuda._is_in_bad_fork(), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
"""


def run_python(code: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


# ---------------------------------------------------------------------------- fork poisoning
def test_asking_cuda_in_a_parent_poisons_its_forked_children():
    """The hazard is real on this CPU machine: what the worker's parent must never do."""
    out = run_python("import torch; torch.cuda.is_available()\n" + FORK_PROBE)
    assert "child bad fork: True" in out


def test_the_device_check_elsewhere_leaves_the_parent_clean():
    out = run_python(
        "from galmet.device import check_device_elsewhere\n"
        "assert check_device_elsewhere('auto') in ('cpu', 'cuda')\n" + FORK_PROBE
    )
    assert "child bad fork: False" in out


def test_galmet_worker_pool_children_are_not_in_a_bad_fork(broker, tiny_model, tmp_path):  # noqa: F811
    """A real ``galmet worker`` with GALMET_DEVICE=auto (the compose GPU worker's setting):
    each pool process reports torch's bad-fork state when it has loaded its model."""
    log = tmp_path / "worker.log"
    env = os.environ | {
        "GALMET_BROKER_URL": broker,
        "GALMET_DATABASE_URL": f"sqlite:///{tmp_path / 'w.sqlite3'}",
        "GALMET_MODEL": str(tiny_model),
        "GALMET_DEVICE": "auto",
        "GALMET_CACHE_DIR": str(tmp_path),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "galmet", "worker", "--concurrency", "2", "--name", "fork-probe"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and log.read_text().count("ready: model") < 2:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        text = log.read_text()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    ready = [line for line in text.splitlines() if "ready: model" in line]
    assert len(ready) == 2, text[-3000:]
    assert all("cuda_bad_fork=False" in line for line in ready), ready
    assert "forked after its parent initialised CUDA" not in text


# ---------------------------------------------------------------------------- no silent CPU
def test_auto_on_a_machine_with_nvidia_devices_but_no_cuda_says_so(monkeypatch, caplog):
    monkeypatch.setattr(device_module, "nvidia_devices", lambda: ["/dev/nvidia0"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="galmet.device"):
        assert device_module.pick_device("auto").type == "cpu"
    (record,) = caplog.records
    message = record.getMessage()
    assert "/dev/nvidia0" in message and f"CUDA {torch.version.cuda}" in message
    assert "driver" in message and "\n" not in message
    with pytest.raises(GalmetError, match="no CUDA GPU is available here: this machine has"):
        device_module.pick_device("cuda")


def test_auto_on_a_plain_cpu_machine_is_quiet(monkeypatch, caplog):
    monkeypatch.setattr(device_module, "nvidia_devices", lambda: [])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="galmet.device"):
        assert device_module.pick_device("auto").type == "cpu"
    assert not caplog.records


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_require_cuda_turns_the_cuda_skips_into_failures():
    test = "tests/test_train_fast.py::test_decode_batch_on_cuda_is_close_to_the_cpu_path"
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test]
    quiet = subprocess.run(base + ["-rs"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and "1 skipped" in quiet.stdout, quiet.stdout[-2000:]
    strict = subprocess.run(
        base, cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=os.environ | {"GALMET_REQUIRE_CUDA": "1"},
    )  # fmt: skip
    assert strict.returncode == 1 and "GALMET_REQUIRE_CUDA=1" in strict.stdout


# ---------------------------------------------------------------------------- launch errors
def test_more_torchrun_processes_than_gpus_is_one_line(monkeypatch):
    from galmet.training.distributed import DistInfo, check_gpu_count

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pytest.raises(GalmetError) as info:
        check_gpu_count(DistInfo(rank=3, world_size=4, local_rank=3), gpus=2)
    assert "4 processes" in str(info.value) and "2 CUDA GPUs" in str(info.value)
    assert "--nproc_per_node 2" in str(info.value)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    check_gpu_count(DistInfo(rank=1, world_size=2, local_rank=1), gpus=2)  # one per GPU: fine


# ---------------------------------------------------------------------------- memory, streams
def test_loading_images_peaks_near_the_final_size(tmp_path):
    from galmet.training.dataset import load_images

    rng = np.random.default_rng(0)
    paths = []
    # 200 cutouts of 128 px (9.8 MB): large enough that the fixed cost of threads and
    # decoders in flight (~0.7 MB measured) does not hide the copies of the dataset.
    for i in range(200):
        path = tmp_path / f"{i}.png"  # lossless: what was written is what is read
        Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    tracemalloc.start()
    try:
        images = load_images(paths, workers=2, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    final = images.numel()
    assert images.shape == (200, 3, 128, 128) and images.dtype == torch.uint8
    assert np.array_equal(images[7].permute(1, 2, 0).numpy(), np.asarray(Image.open(paths[7])))
    assert peak <= 1.3 * final, f"peak {peak / final:.2f}x the dataset"


def test_images_of_two_sizes_are_refused_in_one_line(tmp_path):
    from galmet.training.dataset import load_images

    for name, size in (("a.png", 32), ("b.png", 48)):
        Image.new("RGB", (size, size)).save(tmp_path / name)
    with pytest.raises(GalmetError, match="images differ in size .* pass a size"):
        load_images([tmp_path / "a.png", tmp_path / "b.png"], progress=False)
    assert load_images([tmp_path / "a.png", tmp_path / "b.png"], 16, progress=False).shape == (
        2, 3, 16, 16,
    )  # fmt: skip


def test_nvjpeg_decoding_waits_for_the_callers_stream(monkeypatch):
    """The current stream is synchronised before nvJPEG decodes (torchvision's batched decode
    allocates on the caller's stream and decodes on its own)."""
    import torchvision.io

    from galmet import preprocess

    calls: list[str] = []

    class Stream:
        def synchronize(self) -> None:
            calls.append("synchronize")

    def decode_jpeg(encoded, mode, device):
        calls.append("decode")
        return [torch.zeros(3, 8, 8, dtype=torch.uint8) for _ in encoded]

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr(torchvision.io, "decode_jpeg", decode_jpeg)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: self)
    buf = __import__("io").BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buf, format="JPEG")
    out = preprocess._decode_batch_cuda([buf.getvalue()], 8, torch.device("cpu"))
    assert calls == ["synchronize", "decode"] and out.shape == (1, 8, 8, 3)


# ---------------------------------------------------------------------------- training runs
@pytest.fixture(scope="module")
def small_mock(tmp_path_factory) -> Path:
    from galmet.training.simulate import simulate

    data = tmp_path_factory.mktemp("mock")
    simulate(48, data, seed=7, size=64, workers=1)
    return data


def test_a_diverging_run_stops_in_one_line_and_saves_no_model(small_mock, tmp_path, capsys):
    from galmet.cli import main

    out = tmp_path / "m.pt"
    args = ["train", "--data", str(small_mock), "--out", str(out), "--size", "32"]
    args += ["--batch-size", "8", "--lr", "1e12", "--frozen-epochs", "0", "--cycles", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "galmet: error: training diverged" in err and "non-finite loss" in err
    errors = [line for line in err.splitlines() if line.startswith("galmet: error")]
    assert len(errors) == 1 and "--lr-scale" in errors[0] and "Traceback" not in err
    assert not out.exists()  # no NaN model saved as "best"


def test_a_rate_scaled_up_for_the_batch_warms_up(small_mock, tmp_path):
    from galmet.training.config import TrainConfig
    from galmet.training.train import train

    cfg = TrainConfig(
        data=str(small_mock), out=str(tmp_path / "m.pt"), size=32, batch_size=8, lr=0.01,
        lr_scale="linear", lr_reference_batch=4, frozen_epochs=0, cycles=1, tta=1, seed=3,
    )  # fmt: skip
    ck = train(cfg)
    head = cfg.lr * 8 / 4
    first = ck.history[0]["group_lr"]["first"][-1]
    # The first step runs at head / steps_per_epoch, not at the full scaled rate.
    assert first < head / 2 and first == pytest.approx(head / round(head / first), rel=1e-6)
    plain = TrainConfig(**{**cfg.__dict__, "lr_scale": "none", "out": str(tmp_path / "p.pt")})
    assert train(plain).history[0]["group_lr"]["first"][-1] == pytest.approx(cfg.lr)


def test_resuming_in_another_memory_layout_matches_the_optimiser_state(
    small_mock, tmp_path, monkeypatch
):
    from galmet.cli import main
    from galmet.training.trainer import Trainer

    out = tmp_path / "m.pt"
    base = ["train", "--data", str(small_mock), "--out", str(out), "--size", "32"]
    base += ["--batch-size", "8", "--cycles", "2", "--tta", "1"]
    real_run_epoch = Trainer.run_epoch
    seen: list[list[tuple]] = []

    def stop_in_epoch_3(self, epoch, optimizer, *a, **k):
        if epoch == 2:
            raise KeyboardInterrupt
        return real_run_epoch(self, epoch, optimizer, *a, **k)

    monkeypatch.setattr(Trainer, "run_epoch", stop_in_epoch_3)
    assert main([*base, "--channels-last"]) == 130  # saved with channels_last buffers

    def record_layouts(self, epoch, optimizer, *a, **k):
        seen.append(
            [
                (optimizer.state[p]["momentum_buffer"].stride(), p.stride())
                for group in optimizer.param_groups
                for p in group["params"]
                if p.ndim == 4 and "momentum_buffer" in optimizer.state.get(p, {})
            ]
        )
        return real_run_epoch(self, epoch, optimizer, *a, **k)

    monkeypatch.setattr(Trainer, "run_epoch", record_layouts)
    assert main([*base, "--no-channels-last", "--resume"]) == 0
    assert seen and seen[0], "the resumed optimiser had no conv momentum buffers"
    assert all(buffer == param for buffer, param in seen[0])
