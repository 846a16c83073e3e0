"""The GPU check: prove galmet's CUDA paths and measure them, in one command.

    python bench/gpu_check.py --data data/gpucheck/mock            # on a GPU (<= 8 minutes)
    python bench/gpu_check.py --device cpu --tiny [--data DIR]     # the dry run (CI)

Runs, in order, each step in a process of its own with a time limit, so that one failure
(an exception, a CUDA error that spoils the process, a hang) is reported and the rest go on:

1. ``environment``: GPU, memory, torch/torchvision versions, bf16, NCCL, nvJPEG; and that
   galmet's training code imported without astropy, GalSim or the web stack;
2. ``train_throughput``: ResNet-34 + galmet's head at 128 px, batches 256 and 512, the plain
   fp32 loop against the fast path (bf16, channels_last, fused optimiser, images on the GPU)
   and compiled (``bench/train_throughput.py``); host syncs per step; a 130,000-image
   dataset held on the GPU (``bench/gpu_bench.py``);
3. ``train_run``: ``galmet train`` on the sample with the paper's schedule, fast path and
   plain path with one seed (and the plain path with another, for the noise): seconds per
   epoch and test RMSEs, which must agree (``bench/gpu_train.py``);
4. ``inference``: JPEG bytes to predictions, TTA 1 and 8, nvJPEG against Pillow, images/s
   and peak memory; predictions within 0.005 dex of the CPU path's;
5. ``ddp``: ``torchrun --nproc_per_node 1`` trains one short epoch through the DDP path
   (NCCL on CUDA, Gloo on the CPU) and writes a checkpoint (``bench/gpu_ddp.py``).

Prints a table, then one JSON line (also written to ``$OUT/gpu_check.json`` when ``OUT`` is
set, with the steps' logs in ``$OUT/gpu_check_steps.log``). ``--tiny`` runs every step on
tiny sizes (and, without ``--data``, makes a 64-galaxy mock sky first, which needs GalSim).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
STEPS = ("environment", "train_throughput", "train_run", "inference", "ddp")
#: Sizes of the two runs. ``train_args`` go to every ``galmet train`` of the check.
PROFILES = {
    "full": {
        "size": 128,
        "batches": [256, 512],
        "steps": 30,
        "warmup": 5,
        "dataset_n": 130_000,
        "train_batch": 256,
        "train_args": [],
        "infer_size": 128,
        "infer_n": 32768,
        "infer_pillow_n": 4096,
        "infer_batch": 1024,
        "agree_n": 128,
        "ddp_steps": 10,
        # The whole check within 8 minutes: each step's limit is its cap, or less where the
        # budget left (20 s kept for each step still to come) is less.
        "budget_s": 450,
        "caps_s": {
            "environment": 60,
            "train_throughput": 200,
            "train_run": 200,
            "inference": 120,
            "ddp": 90,
        },
    },
    "tiny": {
        "size": 32,
        "batches": [8],
        "steps": 2,
        "warmup": 1,
        "dataset_n": 130,
        "train_batch": 8,
        "train_args": ["--size", "32", "--max-steps", "2", "--cycles", "1", "--tta", "2"],
        "infer_size": 32,
        "infer_n": 32,
        "infer_pillow_n": 16,
        "infer_batch": 16,
        "agree_n": 8,
        "ddp_steps": 2,
        "budget_s": 420,
        "caps_s": {
            "environment": 60,
            "train_throughput": 150,
            "train_run": 150,
            "inference": 60,
            "ddp": 90,
        },
    },
}
HEAVY = ("astropy", "galsim", "fastapi", "starlette", "sqlalchemy", "celery", "platformdirs")
#: Log lines that say why a step failed.
ERRORS = ("galmet: error", "Error:", "Traceback", "NCCL WARN")
TARGETS = {"train_images_per_s": 25_000, "infer_tta1_images_per_s": 50_000}
TARGETS |= {"infer_tta8_images_per_s": 8_000, "agreement_dex": 0.005}


def run_guarded(
    cmd: list[str], timeout: float, stdout=None, new_group: bool = False
) -> tuple[int, float]:
    """Run ``cmd``; (exit status, seconds). Past ``timeout`` it gets SIGTERM (torchrun passes
    it on to its workers), then SIGKILL, and the status is 124. ``new_group`` starts it in a
    process group of its own and signals the whole group: the parent's side, so that a
    step's children (``galmet train``, torchrun) end with it."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=stdout, start_new_session=new_group)
    try:
        rc = proc.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                if new_group:
                    os.killpg(proc.pid, sig)
                else:
                    proc.send_signal(sig)
                proc.wait(timeout=wait)
                break
            except (subprocess.TimeoutExpired, ProcessLookupError):
                continue
        rc = 124
    return rc, time.monotonic() - start


def time_left(ctx: dict, margin: float = 10.0) -> float:
    """Seconds a step's child may run: until the step's deadline, less ``margin``."""
    return ctx["deadline"] - time.time() - margin


class Report:
    """A step's result, saved as JSON after each row (a killed step keeps its rows)."""

    def __init__(self, path: Path) -> None:
        self.path, self.data = path, {}

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, default=str) + "\n")
        tmp.replace(self.path)


def environment(ctx: dict, report: Report) -> None:
    """Step 1: what this machine is, and that training imports without the heavy packages."""
    import platform

    import numpy
    import PIL
    import torch
    import torchvision

    import galmet.predictor
    import galmet.training.train  # noqa: F401  (its imports are the point)
    from galmet.device import pick_device

    device = pick_device(ctx["requested_device"])
    d = report.data
    d |= {"device": device.type, "python": platform.python_version(), "host": platform.node()}
    d |= {"torch": torch.__version__, "torchvision": torchvision.__version__}
    d |= {"numpy": numpy.__version__, "pillow": PIL.__version__, "cpus": os.cpu_count()}
    d["torch_threads"] = torch.get_num_threads()
    d["galmet_from"] = str(Path(galmet.predictor.__file__).parent)
    d["heavy_modules_loaded"] = [m for m in HEAVY if m in sys.modules]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        d |= {"gpu": props.name, "gpu_memory_gb": round(props.total_memory / 1e9, 1)}
        d |= {"capability": f"{props.major}.{props.minor}", "sms": props.multi_processor_count}
        d |= {"bf16": torch.cuda.is_bf16_supported(), "cuda": torch.version.cuda}
        d |= {"cudnn": torch.backends.cudnn.version(), "nccl": str(torch.cuda.nccl.version())}
        from torchvision.io import decode_jpeg, encode_jpeg

        image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
        decoded = decode_jpeg([encode_jpeg(image)], device=device)[0]
        d["nvjpeg"] = tuple(decoded.shape) == (3, 64, 64) and decoded.is_cuda
        if shutil.which("nvidia-smi"):
            smi = subprocess.run(
                ["nvidia-smi", "--format=csv,noheader", "--query-gpu="
                 "driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            d["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()[:200]
    import torch.distributed as dist

    d["nccl_available"] = dist.is_nccl_available()
    d["ok"] = not d["heavy_modules_loaded"]
    report.save()


def run_step(name: str, ctx: dict, result: Path) -> int:
    """The child's side: one step, its result saved to ``result``."""
    report = Report(result)
    try:
        if name == "environment":
            environment(ctx, report)
        elif name in ("train_throughput", "inference"):
            import gpu_bench

            getattr(gpu_bench, name)(ctx, report)
        else:
            import gpu_train

            getattr(gpu_train, name)(ctx, report)
    except Exception as exc:  # reported in the JSON; the parent goes on with the next step
        report.data |= {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
        report.data["traceback"] = traceback.format_exc().splitlines()[-12:]
        report.save()
        return 1
    report.save()
    return 0


def make_tiny_sample(work: Path, log) -> str | None:
    """A 64-galaxy mock sky at 64 px for the dry run (``galmet simulate``: needs GalSim)."""
    out = work / "mock"
    cmd = [sys.executable, "-m", "galmet", "simulate", "--n", "64", "--size", "64"]
    cmd += ["--seed", "4", "--workers", "1", "--out", str(out)]
    rc, _ = run_guarded(cmd, 180, stdout=log, new_group=True)
    return str(out) if rc == 0 else None


def pick(rows: list[dict], **match) -> list[dict]:
    return [r for r in rows if r.get("ok") and all(r.get(k) == v for k, v in match.items())]


def figures(steps: dict, on_gpu: bool) -> dict:
    """The figures the issue asks for, each with its target (speed targets judged on a GPU
    only: ``met`` is null on the CPU)."""

    def judged(value, target, higher=True, always=False):
        met = None if value is None or not (on_gpu or always) else (
            value >= target if higher else value <= target)  # fmt: skip
        return {"value": value, "target": target, "met": met}

    f: dict = {}
    tp = steps.get("train_throughput", {})
    fast = pick(tp.get("rows", []), mode="fast") + pick(tp.get("rows", []), mode="compile")
    if fast:
        best = max(fast, key=lambda r: r["images_per_s"])
        f["train_images_per_s"] = judged(best["images_per_s"], TARGETS["train_images_per_s"])
        f["train_images_per_s"] |= {"mode": best["mode"], "batch": best["batch"]}
        plain = pick(tp.get("rows", []), mode="plain", batch=best["batch"])
        if plain:
            f["train_plain_images_per_s"] = plain[0]["images_per_s"]
            f["train_speedup"] = round(best["images_per_s"] / plain[0]["images_per_s"], 2)
    syncs = [r for r in pick(tp.get("sync", [])) if "skipped" not in r]
    if syncs:
        keep = ("syncs_at_4_steps", "syncs_at_12_steps", "none_per_step")
        f["host_syncs_per_epoch"] = {k: syncs[0][k] for k in keep}
    dataset = pick(tp.get("dataset", []))
    if dataset:
        ds = dataset[0]
        f["dataset_on_device"] = {k: ds.get(k) for k in ("n", "dataset_gb", "held_gb")}
        f["dataset_on_device"] |= {"images_per_s": ds["images_per_s"], "peak_mb": ds["peak_mem_mb"]}
    inf = steps.get("inference", {})
    decode = "nvjpeg" if on_gpu else "pillow"
    for tta in (1, 8):
        rows = pick(inf.get("rows", []), decode=decode, tta=tta)
        if rows:
            key = f"infer_tta{tta}_images_per_s"
            f[key] = judged(rows[0]["images_per_s"], TARGETS[key]) | {"decode": decode}
            f[key]["peak_mb"] = rows[0]["peak_mem_mb"]
    agreement = pick(inf.get("agreement", []))
    if agreement:
        worst = max(r["max_abs_dex"] for r in agreement)
        f["agreement_dex"] = judged(worst, TARGETS["agreement_dex"], higher=False, always=True)
    if "agreement" in steps.get("train_run", {}):
        f["rmse_fast_vs_plain"] = steps["train_run"]["agreement"]
    ddp = steps.get("ddp", {})
    f["ddp"] = {k: ddp.get(k) for k in ("backend", "world_size", "ddp", "checkpoint")}
    return f


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cuda or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: the CPU dry run")
    parser.add_argument("--data", help="sample folder (catalog.csv, images/), e.g. a mock sky")
    parser.add_argument("--work", help="folder for models and logs (default: a new temp dir)")
    parser.add_argument("--only", nargs="+", choices=STEPS, help="run only these steps")
    parser.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)  # the child's side
    parser.add_argument("--ctx", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        return run_step(args.step, json.loads(args.ctx), Path(args.result))
    if not args.tiny and not args.data:
        parser.error("--data is needed (make a sample with bench/gpu_check.sh prepare)")

    started, clock = datetime.now(UTC), time.monotonic()
    profile = PROFILES["tiny" if args.tiny else "full"]
    if args.tiny:
        # Tiny tensors gain nothing from threads, and on a busy CPU (CI, shared machines)
        # OpenMP's threads wait for each other: one thread each, unless told otherwise.
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = Path(args.work or tempfile.mkdtemp(prefix="gpucheck-")).resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    data = str(Path(args.data).resolve()) if args.data else None
    if data is None:
        with (work / "logs" / "prepare.log").open("w") as log:
            data = make_tiny_sample(work, log)
    device = "cpu" if args.device == "cpu" else "cuda" if args.device == "cuda" else None
    steps: dict = {}
    todo = [s for s in STEPS if not args.only or s in args.only or s == "environment"]
    for i, name in enumerate(todo):
        left = profile["budget_s"] - (time.monotonic() - clock) - 20 * (len(todo) - i - 1)
        timeout = max(30.0, min(profile["caps_s"][name], left))
        ctx = {"requested_device": args.device, "device": device or "cpu", "data": data}
        ctx |= {"profile": profile, "work": str(work), "deadline": time.time() + timeout}
        result = work / f"{name}.json"
        result.unlink(missing_ok=True)
        if name != "environment" and data is None and name not in ("train_throughput",):
            steps[name] = {"ok": False, "error": "no sample: give --data (see prepare.log)"}
            continue
        cmd = [sys.executable, str(BENCH / "gpu_check.py"), "--step", name]
        cmd += ["--ctx", json.dumps(ctx), "--result", str(result)]
        print(f"[{time.monotonic() - clock:6.1f} s] {name} (limit {timeout:.0f} s)", flush=True)
        with (work / "logs" / f"{name}.log").open("w") as log:
            rc, seconds = run_guarded(cmd, timeout, stdout=log, new_group=True)
        step = json.loads(result.read_text()) if result.exists() else {}
        step |= {"rc": rc, "seconds": round(seconds, 1), "timed_out": rc == 124}
        step["ok"] = rc == 0 and bool(step.get("ok"))
        if not step["ok"]:
            lines = (work / "logs" / f"{name}.log").read_text(errors="replace").splitlines()
            step["log_tail"] = [line[-300:] for line in lines[-15:]]
            # The causes, which torchrun's own report or a traceback may push out of the tail.
            causes = [ln for ln in lines if any(mark in ln for mark in ERRORS)]
            step["log_errors"] = [line[-300:] for line in causes[-5:]]
        steps[name] = step
        if name == "environment" and device is None:
            device = step.get("device", "cpu")

    on_gpu = device == "cuda"
    env = steps.get("environment", {})
    report = {
        "gpu_check": 1,
        "date": started.isoformat(timespec="seconds"),
        "device": device,
        "device_name": env.get("gpu", "cpu"),
        "tiny": args.tiny,
        "data": data,
        "work": str(work),
        "seconds": round(time.monotonic() - clock, 1),
        "ok": all(s.get("ok") for s in steps.values()),
        "figures": figures(steps, on_gpu),
        "steps": steps,
    }
    print_table(report)
    line = json.dumps(report, default=str)
    out = os.environ.get("OUT")
    if out:
        Path(out, "gpu_check.json").write_text(line + "\n")
        logs = sorted((work / "logs").glob("*.log"))
        Path(out, "gpu_check_steps.log").write_text(
            "".join(f"===== {p.name}\n{p.read_text(errors='replace')}\n" for p in logs)
        )
    print(line)
    return 0 if report["ok"] else 1


def print_table(report: dict) -> None:
    print(f"\nGPU check on {report['device_name']} ({report['device']}), {report['date']}")
    for name, step in report["steps"].items():
        state = "ok" if step["ok"] else ("TIMED OUT" if step.get("timed_out") else "FAILED")
        note = step.get("error", "")[:90]
        print(f"  {name:18s} {state:9s} {step.get('seconds', 0):7.1f} s  {note}")
    for key, value in report["figures"].items():
        print(f"  {key:26s} {json.dumps(value)}")
    print(f"  total {report['seconds']:.1f} s; work folder {report['work']}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
