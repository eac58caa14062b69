#!/usr/bin/env bash
# The GPU checks of issue 23 as one prepared script (bench/gpu.py does the checks; results in bench/GPU.md).
#
#   bash bench/gpu.sh prepare                 # here, with PyPI: the wheels the GPU machine lacks -> .gpu/wheels
#   bash bench/gpu.sh run OUT                 # there: install those wheels, run every check, write OUT/
#   bash bench/gpu.sh run OUT --device cpu    # the same checks on CPU on the tiny models (a smoke run, any machine)
#
# The GPU machine has no network and no bitsandbytes; it has torch, accelerate, typer, rich, pyarrow... but not
# ftkit's other dependencies at the tested versions. `prepare` downloads them at requirements/lock.txt's versions
# for that machine's Python (3.12, x86-64 Linux); `run` installs them into a scratch folder put first on PYTHONPATH
# (nothing of the machine's own is changed) and runs ftkit from this checkout. On the device tool:
#   run(command="bash bench/gpu.sh run $OUT", carry=[".gpu"], timeout_s=540)
# OUT gets results.json, results.md, logs.txt; the models and runs go to a temporary folder (--work DIR to keep).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
WHEELS="$REPO/.gpu/wheels"
# what the GPU machine lacks or has at other versions than the lock (and what those need that it lacks)
PACKAGES="bitsandbytes transformers peft seqeval rouge-score nltk gguf regex defusedxml"
LIMIT_S=${GPU_CHECK_LIMIT_S:-470}  # the whole run stays under 8 minutes

usage() { echo "usage: bench/gpu.sh prepare | run OUT [--device cuda|cpu] [--only TEXT] [--work DIR]" >&2; exit 2; }

prepare() {
    mkdir -p "$WHEELS"
    local pins=()
    for p in $PACKAGES; do
        pin=$(grep -m1 -i "^${p}==" "$REPO/requirements/lock.txt" | cut -d' ' -f1) || true
        [ -n "$pin" ] || { echo "bench/gpu.sh: $p is not in requirements/lock.txt" >&2; exit 2; }
        pins+=("$pin")
    done
    local platforms=()
    for n in 28 27 24 17; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
    # binary wheels for CPython 3.12 where there are any; sdists (seqeval, rouge-score) are built into pure wheels
    for pin in "${pins[@]}"; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            "${platforms[@]}" --platform manylinux2014_x86_64 --platform any -d "$WHEELS" "$pin" 2>/dev/null ||
            python3 -m pip wheel -q --no-deps -w "$WHEELS" "$pin"
    done
    du -sh "$WHEELS"  # with the checkout, under the device tool's 64 MiB a call
}

run() {
    [ $# -ge 1 ] || usage
    local out="$1"; shift
    local device=cuda
    for ((i = 1; i <= $#; i++)); do [ "${!i}" = --device ] && { j=$((i + 1)); device="${!j:-}"; }; done
    case "$device" in cuda|cpu) ;; *) usage ;; esac
    local python="${PYTHON:-python3}"
    if [ "$device" = cuda ]; then
        "$python" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" || {
            echo "bench/gpu.sh: torch sees no CUDA device (use --device cpu for the smoke run)" >&2; exit 2; }
        if [ -d "$WHEELS" ]; then
            "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
                --target /tmp/ftkit-site "$WHEELS"/*.whl
            export PYTHONPATH="/tmp/ftkit-site${PYTHONPATH:+:$PYTHONPATH}"
        else
            echo "bench/gpu.sh: no $WHEELS (run 'bash bench/gpu.sh prepare' where PyPI is reachable, carry .gpu)" >&2
        fi
        mkdir -p "$out"
        { nvidia-smi || true; } > "$out/logs.txt" 2>&1
    fi
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
    timeout --signal=TERM --kill-after=20 "$LIMIT_S" "$python" "$HERE/gpu.py" "$out" "$@"
}

case "${1:-}" in
    prepare) shift; [ $# -eq 0 ] || usage; prepare ;;
    run) shift; run "$@" ;;
    *) usage ;;
esac
