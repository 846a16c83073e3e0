#!/usr/bin/env bash
# The GPU check, both halves (read the README's "GPU check" section).
#
#   bash bench/gpu_check.sh prepare [N]    # here, on the CPU: a mock sky to carry (N = 5000)
#   bash bench/gpu_check.sh device [ARGS]  # there, on the bare GPU machine: the check itself
#
# prepare writes data/gpucheck/mock (git-ignored: /data/), N galaxies at 128 px, about
# 7 KB each with their catalog rows: 5000 come to ~35 MB, under the 64 MiB that travels.
# device lays galmet out by import name in /tmp/galmet-tree and puts it on PYTHONPATH (the
# machine's own python3 keeps its torch; nothing is installed), then runs
# bench/gpu_check.py on the carried sample; the log and the JSON land in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
SAMPLE=data/gpucheck/mock

case "${1:-}" in
prepare)
    n="${2:-5000}"
    galmet=galmet
    [ -x .venv/bin/galmet ] && galmet=.venv/bin/galmet
    rm -rf "$SAMPLE"
    "$galmet" simulate --n "$n" --size 128 --seed 0 --out "$SAMPLE"
    rm -f "$SAMPLE/truth.csv"  # latents: the check does not use them
    du -sh "$SAMPLE"
    ;;
device)
    shift
    [ -f "$SAMPLE/catalog.csv" ] || { echo "no $SAMPLE: run bench/gpu_check.sh prepare here and carry data/gpucheck" >&2; exit 2; }
    tree=/tmp/galmet-tree
    rm -rf "$tree" && mkdir -p "$tree"
    cp -r galmet "$tree/galmet"
    for part in app training worker; do cp -r "$part" "$tree/galmet/$part"; done
    export PYTHONPATH="$tree${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    out="${OUT:-/tmp/gpucheck}"
    mkdir -p "$out"
    [ $# -gt 0 ] || set -- --device cuda
    "${PYTHON:-python3}" bench/gpu_check.py --data "$SAMPLE" --work /tmp/gpucheck-work "$@" \
        2>&1 | tee "$out/gpu_check.log"
    ;;
*)
    echo "usage: bash bench/gpu_check.sh prepare [N] | device [gpu_check.py options]" >&2
    exit 2
    ;;
esac
