"""The GPU check (``bench/gpu_check.py``) stays alive: its dry run, every step on tiny sizes
on the CPU, in a Python that cannot import astropy, GalSim or the web stack, as on the GPU
machine it is made for (``tests/bare/sitecustomize.py``)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from galmet.training.simulate import simulate

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
STEPS = ["environment", "train_throughput", "train_run", "inference", "ddp"]


def gpu_check(*args: str, out: Path, timeout: float) -> tuple[subprocess.CompletedProcess, dict]:
    """Run the check in a bare Python; (the process, its last line as JSON)."""
    bare = [str(ROOT / "tests" / "bare"), os.environ.get("PYTHONPATH")]
    path = os.pathsep.join(filter(None, bare))
    env = os.environ | {"PYTHONPATH": path, "OUT": str(out)}
    out.mkdir(exist_ok=True)
    res = subprocess.run(
        [sys.executable, str(BENCH / "gpu_check.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert res.stdout.strip(), res.stderr[-3000:]
    return res, json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    """64 mock galaxies at 64 px (trained at 32 px by the tiny profile)."""
    out = tmp_path_factory.mktemp("gpucheck") / "mock"
    simulate(64, out, seed=4, size=64, workers=1)
    return out


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_dry_run_reports_every_step_ok_with_plausible_figures(sample, tmp_path):
    res, report = gpu_check(
        "--device", "cpu", "--tiny", "--data", str(sample), "--work", str(tmp_path / "work"),
        out=tmp_path / "out", timeout=1100,
    )  # fmt: skip
    steps = report["steps"]
    failed = {k: (s.get("error"), s.get("log_tail")) for k, s in steps.items() if not s["ok"]}
    assert res.returncode == 0 and not failed, failed
    assert list(steps) == STEPS and report["ok"] and report["device"] == "cpu"
    # The JSON line is also the file under $OUT, with the steps' logs beside it.
    assert json.loads((tmp_path / "out" / "gpu_check.json").read_text()) == report
    assert "===== train_run.log" in (tmp_path / "out" / "gpu_check_steps.log").read_text()

    env = steps["environment"]
    assert env["heavy_modules_loaded"] == [] and env["torch"]

    rows = {r["mode"]: r for r in steps["train_throughput"]["rows"]}
    assert set(rows) == {"plain", "fast", "compile"}
    for r in rows.values():
        assert r["ok"] and r["images_per_s"] > 0 and r["peak_mem_mb"] > 0
    assert rows["fast"]["bf16"] and rows["fast"]["channels_last"] and not rows["plain"]["bf16"]
    assert rows["compile"]["compile"] and rows["compile"]["compile_backend"] == "aot_eager"
    (dataset,) = steps["train_throughput"]["dataset"]
    assert dataset["n"] == 130 and dataset["data_on_device"] and dataset["images_per_s"] > 0

    runs = {r["run"]: r for r in steps["train_run"]["runs"]}
    assert set(runs) == {"fast", "plain", "plain_seed1"}
    for r in runs.values():
        assert 0 < r["test_rmse"] < 1 and r["epochs"] == 2 and r["epoch_s"] > 0
    assert "--bf16" in runs["fast"]["args"] and "--no-bf16" in runs["plain"]["args"]
    agreement = steps["train_run"]["agreement"]
    assert agreement["pass"] and agreement["tolerance_dex"] >= 0.01
    difference = abs(agreement["fast_rmse"] - agreement["plain_rmse"])
    assert math.isclose(agreement["difference_dex"], difference)

    inference = steps["inference"]
    assert inference["model"].endswith("train_fast.pt") and inference["input_size"] == 32
    assert {(r["decode"], r["tta"]) for r in inference["rows"]} == {("pillow", 1), ("pillow", 8)}
    assert all(r["images_per_s"] > 0 for r in inference["rows"])
    assert [a["tta"] for a in inference["agreement"]] == [1, 8]
    assert all(a["max_abs_dex"] <= 0.005 and a["pass"] for a in inference["agreement"])

    ddp = steps["ddp"]
    assert (ddp["backend"], ddp["world_size"], ddp["ddp"]) == ("gloo", 1, True)
    assert ddp["checkpoint"] and 0 < ddp["test_rmse"] < 1

    figures = report["figures"]
    assert figures["train_images_per_s"]["met"] is None  # speed targets: judged on a GPU only
    assert figures["agreement_dex"]["met"] is True
    assert figures["rmse_fast_vs_plain"]["pass"] and figures["ddp"]["checkpoint"]


def test_a_failing_step_is_reported_and_the_check_goes_on(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    res, report = gpu_check(
        "--device", "cpu", "--tiny", "--data", str(empty), "--only", "ddp", "inference",
        "--work", str(tmp_path / "work"), out=tmp_path / "out", timeout=600,
    )  # fmt: skip
    steps = report["steps"]
    assert res.returncode == 1 and not report["ok"]
    assert list(steps) == ["environment", "inference", "ddp"] and steps["environment"]["ok"]
    assert not steps["inference"]["ok"] and "images/*.jpg" in json.dumps(steps["inference"])
    assert not steps["ddp"]["ok"] and "torchrun exited" in steps["ddp"]["error"]
    assert any("no catalog.csv" in line for line in steps["ddp"]["log_errors"])


def gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie waiting to be reaped counts)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] in "ZX"
    except (FileNotFoundError, IndexError):
        return True


def test_a_step_past_its_limit_is_stopped_with_its_children(tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        from gpu_check import run_guarded
    finally:
        sys.path.remove(str(BENCH))
    pids = tmp_path / "pids"
    child = (
        "import os, subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{p.pid}}')\n"
        "time.sleep(120)\n"
    )
    rc, seconds = run_guarded([sys.executable, "-c", child], 5, new_group=True)
    assert rc == 124 and seconds < 40
    deadline = time.monotonic() + 10
    while not all(gone(int(pid)) for pid in pids.read_text().split()):
        assert time.monotonic() < deadline, "a child outlived its step"
        time.sleep(0.2)


def test_figures_judge_speed_on_a_gpu_only_and_agreement_everywhere():
    sys.path.insert(0, str(BENCH))
    try:
        from gpu_check import figures
    finally:
        sys.path.remove(str(BENCH))
    rows = [
        {"mode": "plain", "batch": 512, "ok": True, "images_per_s": 9000.0},
        {"mode": "fast", "batch": 512, "ok": True, "images_per_s": 27000.0},
        {"mode": "compile", "batch": 512, "ok": False, "error": "InductorError: ..."},
    ]
    infer = [
        {"decode": "nvjpeg", "tta": 1, "ok": True, "images_per_s": 40000.0, "peak_mem_mb": 3e3},
        {"decode": "nvjpeg", "tta": 8, "ok": True, "images_per_s": 9000.0, "peak_mem_mb": 5e3},
        {"decode": "pillow", "tta": 1, "ok": True, "images_per_s": 4000.0, "peak_mem_mb": 3e3},
    ]
    agreement = [
        {"tta": 1, "ok": True, "max_abs_dex": 0.002},
        {"tta": 8, "ok": True, "max_abs_dex": 0.006},
    ]
    steps = {
        "train_throughput": {"rows": rows},
        "inference": {"rows": infer, "agreement": agreement},
    }
    gpu = figures(steps, on_gpu=True)
    assert gpu["train_images_per_s"] == {
        "value": 27000.0, "target": 25000, "met": True, "mode": "fast", "batch": 512
    }  # fmt: skip
    assert gpu["train_speedup"] == 3.0
    assert gpu["infer_tta1_images_per_s"]["met"] is False  # 40,000 < 50,000
    assert gpu["infer_tta8_images_per_s"]["met"] is True
    assert gpu["agreement_dex"] == {"value": 0.006, "target": 0.005, "met": False}
    cpu = figures(steps, on_gpu=False)
    assert cpu["train_images_per_s"]["met"] is None and cpu["agreement_dex"]["met"] is False
    assert cpu["infer_tta1_images_per_s"]["value"] == 4000.0  # Pillow's row on the CPU
