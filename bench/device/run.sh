#!/usr/bin/env bash
# GPU-session runbook: run THERE (the lent device machine, through the `run` tool) from the repo root:
#     INPO_COMMIT=<sha> bash bench/device/run.sh STAGE [STAGE...]
# Stages (see bench/device/README.md for which to combine per 10-minute call):
#   setup      install carried wheels (.whl/ -> /tmp/site), make `inpo` importable (editable, no deps, no index),
#              print nvidia-smi, versions, commit and which baselines import. Every other stage runs it first
#              (cheap when already done: a machine can be fresh on any call).
#   gpu-tests  python3 -m pytest -m gpu -x -q                          -> $OUT/gpu-tests.log
#   head       python3 -m bench.head (bf16, two shapes, flat+peaked)   -> $OUT/head-<gpu>.jsonl, $OUT/head.log
#   step       python3 -m bench.step, one process per system           -> $OUT/step-<gpu>.jsonl, $OUT/step.log
#   iteration  python3 -m bench.iteration, one process per algorithm   -> $OUT/iteration-<gpu>.jsonl, $OUT/iteration.log
#   report     python3 -m bench.report                                 -> $OUT/REPORT.md, $OUT/plots.tar, $OUT/report.log
#   smoke      every bench with --smoke, then a report of those records (plumbing check; also runs on CPU)
#              -> $OUT/smoke-{head,step,iteration}.jsonl, $OUT/smoke-REPORT.md, $OUT/smoke.log
#   nash       the Nash-LM protocol on a larger π_ref (bench/device/nash.md), resumable across calls
#              -> $OUT/nash.tar (summary.md, runs.jsonl, predictions.jsonl, calibration.json, plots), $OUT/nash.log
# The *.jsonl under $OUT hold ONLY this call's new records (written as they are made, so a run cut off by the
# 10-minute limit still returns what it measured); they are also appended to bench/results/ on the machine so a
# `report` stage in the same call sees them. Bring them back by APPENDING to bench/results/ here (README).
#
# Environment:
#   OUT                     where logs/results go (the device sets it; unset: a fresh temp dir, printed)
#   INPO_PYTHON             interpreter (default python3)
#   INPO_COMMIT             commit recorded in every bench record (the device tree has no .git)
#   INPO_DEVICE_SKIP_INSTALL=1   setup installs nothing (CPU tests here), only checks `import inpo`
#   INPO_DEADLINE_S         seconds after which no further bench process starts and a running one is stopped
#                           (default 570: the device kills a command at 600 s)
#   INPO_HEAD_ARGS, INPO_STEP_ARGS, INPO_ITER_ARGS, INPO_PYTEST_ARGS   extra arguments for those commands
#   INPO_STEP_SYSTEMS       comma list (default: inpo,inpo-naive-head + liger and trl when they import)
#   INPO_ITER_ALGOS         comma list (default: inpo,sppo,dno)
#   INPO_NASH_ARGS          arguments of bench.experiment_nash (default: the recipe's reduced protocol, nash.md)
set -euo pipefail
export PYTHONUNBUFFERED=1

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="${INPO_PYTHON:-python3}"
DEADLINE_S="${INPO_DEADLINE_S:-570}"
STAGES_KNOWN="setup gpu-tests head step iteration report smoke nash"

usage() {
    echo "usage: bash bench/device/run.sh STAGE [STAGE...]   stages: $STAGES_KNOWN" >&2
}

if [ "$#" -eq 0 ]; then usage; exit 2; fi
for s in "$@"; do
    case " $STAGES_KNOWN " in
        *" $s "*) ;;
        *) echo "run.sh: unknown stage '$s' (known: $STAGES_KNOWN)" >&2; usage; exit 2 ;;
    esac
done

if [ -z "${OUT:-}" ]; then
    OUT="$(mktemp -d "${TMPDIR:-/tmp}/inpo-device-out.XXXXXX")"
    echo "OUT was unset: writing logs and results to $OUT"
fi
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export OUT
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-/tmp/inpo-cache/inductor}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-/tmp/inpo-cache/torch_extensions}"
export MPLBACKEND="${MPLBACKEND:-Agg}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1   # the device reaches nothing outside
SITE=/tmp/site
[ -d "$SITE" ] && case ":${PYTHONPATH:-}:" in *":$SITE:"*) ;; *) export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" ;; esac

FAILURES=()
SETUP_DONE=0
HAVE_CUDA=0
SLUG=""

elapsed() { echo "$SECONDS"; }
remaining() { echo $(( DEADLINE_S - SECONDS )); }

# Run a command with the time left before the deadline, tee'd to a log; never aborts the script (records failures).
# usage: guarded LOG LABEL cmd...
guarded() {
    local log="$1" label="$2"; shift 2
    local left; left="$(remaining)"
    if [ "$left" -le 5 ]; then
        echo "[run.sh] SKIPPED $label: deadline (${DEADLINE_S}s) reached; rerun it in another call" | tee -a "$log"
        FAILURES+=("$label: skipped (deadline)")
        return 0
    fi
    local t0=$SECONDS rc=0
    echo "[run.sh] >>> $label (time left ${left}s): $*" | tee -a "$log"
    set +e
    timeout -k 10 "$left" "$@" 2>&1 | tee -a "$log"
    rc=${PIPESTATUS[0]}
    set -e
    echo "[run.sh] <<< $label: rc=$rc in $(( SECONDS - t0 ))s" | tee -a "$log"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        FAILURES+=("$label: stopped at the deadline (rc $rc)")
    elif [ "$rc" -ne 0 ]; then
        FAILURES+=("$label: rc $rc")
    fi
    return 0
}

pyimport_ok() { (cd /tmp && "$PY" -c "$1" >/dev/null 2>&1); }

stage_setup() {
    [ "$SETUP_DONE" -eq 1 ] && return 0
    local t0=$SECONDS log="$OUT/setup.log"
    # The commit every record carries (record.py reads INPO_COMMIT): the device tree travels without .git.
    if [ -z "${INPO_COMMIT:-}" ]; then
        INPO_COMMIT="$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || true)"
        if [ -n "$INPO_COMMIT" ] && [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
            INPO_COMMIT="$INPO_COMMIT+dirty"
        fi
        [ -n "$INPO_COMMIT" ] || INPO_COMMIT=unknown
    fi
    export INPO_COMMIT
    # (the block below runs in a subshell because of `| tee`: exports inside it do not survive)
    {
        echo "[setup] repo $ROOT, python: $(command -v "$PY" || echo "$PY (not found)")"
        if [ "${INPO_DEVICE_SKIP_INSTALL:-0}" = "1" ]; then
            echo "[setup] INPO_DEVICE_SKIP_INSTALL=1: installing nothing"
        else
            if compgen -G ".whl/*.whl" > /dev/null; then
                local stamp; stamp="$(printf '%s ' .whl/*.whl)"
                if [ -f "$SITE/.inpo-wheels" ] && [ "$(cat "$SITE/.inpo-wheels")" = "$stamp" ]; then
                    echo "[setup] carried wheels already in $SITE"
                else
                    echo "[setup] installing carried wheels into $SITE: $stamp"
                    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
                        --target "$SITE" .whl/*.whl
                    echo "$stamp" > "$SITE/.inpo-wheels"
                fi
                # shellcheck disable=SC2030  # for the checks below, inside this subshell; re-exported after it
                export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
            else
                echo "[setup] no .whl/ carried: Liger, CCE and TRL baselines will be skipped (name .whl in carry)"
            fi
            # `inpo` importable from anywhere, our kernels/ and csrc/ mapped as inpo.kernels / inpo.csrc,
            # without touching the image's torch: editable, no deps, no index, no build isolation.
            local where
            where="$(cd /tmp && "$PY" -c 'import inpo, inpo.kernels, os; print(os.path.dirname(os.path.dirname(inpo.__file__)))' 2>/dev/null || true)"
            if [ "$where" = "$ROOT" ]; then
                echo "[setup] inpo already importable from $ROOT"
            else
                echo "[setup] pip install --no-deps --no-build-isolation --no-index -e ."
                if ! "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . ; then
                    echo "[setup] ERROR: could not install inpo in editable mode (needs setuptools>=64 in $PY's" \
                         "environment; no network is needed). Nothing else can run." >&2
                    exit 1
                fi
            fi
        fi
        if ! (cd /tmp && "$PY" -c 'import inpo, inpo.kernels' ); then
            echo "[setup] ERROR: 'import inpo, inpo.kernels' fails with $PY (see above)" >&2
            exit 1
        fi
        echo "[setup] commit: $INPO_COMMIT"
        [ "$INPO_COMMIT" != unknown ] || echo "[setup] WARNING: no .git here and INPO_COMMIT unset: records say commit=unknown"
        if command -v nvidia-smi > /dev/null; then
            nvidia-smi || true
        else
            echo "[setup] nvidia-smi: not found"
        fi
        (cd /tmp && "$PY" - <<'PYEOF'
import importlib, importlib.metadata, platform, sys
print(f"[setup] python {platform.python_version()} ({sys.executable})")
import torch
print(f"[setup] torch {torch.__version__} cuda {torch.version.cuda} available={torch.cuda.is_available()}"
      + (f" device={torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
for mod in ("triton", "transformers", "inpo", "liger_kernel", "cut_cross_entropy", "trl", "datasets",
            "accelerate", "pyarrow", "fsspec", "huggingface_hub", "dill", "multiprocess", "pynvml", "matplotlib"):
    try:
        m = importlib.import_module(mod)
        ver = getattr(m, "__version__", None)
        if ver is None:
            try:
                ver = importlib.metadata.version({"liger_kernel": "liger-kernel", "pynvml": "nvidia-ml-py"}.get(mod, mod))
            except Exception:
                ver = "?"
        print(f"[setup] {mod} {ver}  ({getattr(m, '__file__', '')})")
    except Exception as exc:
        print(f"[setup] {mod}: NOT importable ({type(exc).__name__}: {str(exc)[:200]})")
PYEOF
        )
    } 2>&1 | tee -a "$log"
    # `exit 1` inside the braces only leaves the pipeline's subshell: re-check here.
    if ! pyimport_ok 'import inpo, inpo.kernels'; then
        echo "[setup] FAILED (see $log)" >&2
        exit 1
    fi
    if [ -d "$SITE" ]; then
        # shellcheck disable=SC2031
        case ":${PYTHONPATH:-}:" in *":$SITE:"*) ;; *) export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" ;; esac
    fi
    if pyimport_ok 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then HAVE_CUDA=1; fi
    SLUG="$(cd /tmp && "$PY" -c 'from inpo.utils.record import device_slug; print(device_slug())')"
    SETUP_DONE=1
    echo "[run.sh] setup: $(( SECONDS - t0 ))s (device slug: $SLUG, cuda: $HAVE_CUDA)"
}

need_cuda() {
    if [ "$HAVE_CUDA" -ne 1 ]; then
        echo "[run.sh] stage '$1' needs a CUDA device (none here); use 'smoke' to test the plumbing" >&2
        FAILURES+=("$1: no CUDA device")
        return 1
    fi
}

# New records of this call: $OUT/<kind>-<slug>.jsonl; also appended to bench/results/ for a same-call report.
merge_local() {
    local kind="$1" src="$OUT/$1-$SLUG.jsonl"
    if [ -s "$src" ]; then
        cat "$src" >> "bench/results/$kind-$SLUG.jsonl"
        echo "[run.sh] $kind: $(wc -l < "$src") new records in $src (also appended to bench/results/$kind-$SLUG.jsonl here)"
    else
        echo "[run.sh] $kind: no records written"
    fi
}

stage_gpu_tests() {
    need_cuda gpu-tests || return 0
    # shellcheck disable=SC2086
    guarded "$OUT/gpu-tests.log" gpu-tests "$PY" -m pytest -m gpu -x -q -p no:cacheprovider ${INPO_PYTEST_ARGS:-}
}

stage_head() {
    need_cuda head || return 0
    # shellcheck disable=SC2086
    guarded "$OUT/head.log" head "$PY" -m bench.head --out "$OUT/head-$SLUG.jsonl" ${INPO_HEAD_ARGS:-}
    merge_local head
}

baseline_systems() {
    local systems="inpo,inpo-naive-head"
    if pyimport_ok 'import liger_kernel.transformers'; then systems="$systems,liger"
    else echo "[run.sh] liger-kernel does not import: the liger system is skipped" >&2; fi
    # TRL also needs datasets (the step bench builds its Dataset with an explicit fingerprint: see
    # bench/step.py _in_memory_dataset for the dill/pyarrow failure that avoids).
    if pyimport_ok 'import trl, datasets, pyarrow'; then
        systems="$systems,trl"
    else
        echo "[run.sh] trl/datasets/pyarrow do not import here: the trl system is skipped" >&2
    fi
    echo "$systems"
}

stage_step() {
    need_cuda step || return 0
    local systems="${INPO_STEP_SYSTEMS:-}"
    [ -n "$systems" ] || systems="$(baseline_systems)"
    echo "[run.sh] step systems: $systems" | tee -a "$OUT/step.log"
    local s
    for s in ${systems//,/ }; do
        # shellcheck disable=SC2086
        guarded "$OUT/step.log" "step:$s" "$PY" -m bench.step --systems "$s" --out "$OUT/step-$SLUG.jsonl" ${INPO_STEP_ARGS:-}
    done
    merge_local step
}

stage_iteration() {
    need_cuda iteration || return 0
    local algos="${INPO_ITER_ALGOS:-inpo,sppo,dno}" a
    for a in ${algos//,/ }; do
        # shellcheck disable=SC2086
        guarded "$OUT/iteration.log" "iteration:$a" "$PY" -m bench.iteration --algorithms "$a" \
            --out "$OUT/iteration-$SLUG.jsonl" ${INPO_ITER_ARGS:-}
    done
    merge_local iteration
}

stage_report() {
    guarded "$OUT/report.log" report "$PY" -m bench.report
    [ -f bench/REPORT.md ] && cp bench/REPORT.md "$OUT/REPORT.md"
    if compgen -G "bench/results/plots/*.png" > /dev/null; then
        tar -cf "$OUT/plots.tar" -C bench/results plots
        echo "[run.sh] report: plots in $OUT/plots.tar"
    fi
}

stage_smoke() {
    local log="$OUT/smoke.log" tmp
    tmp="$(mktemp -d "${TMPDIR:-/tmp}/inpo-smoke.XXXXXX")"
    rm -f "$OUT"/smoke-*.jsonl
    guarded "$log" smoke:head "$PY" -m bench.head --smoke --out "$OUT/smoke-head.jsonl"
    local systems="${INPO_STEP_SYSTEMS:-}"
    [ -n "$systems" ] || systems="$(baseline_systems)"
    guarded "$log" smoke:step "$PY" -m bench.step --smoke --systems "$systems" --out "$OUT/smoke-step.jsonl"
    guarded "$log" smoke:iteration "$PY" -m bench.iteration --smoke --out "$OUT/smoke-iteration.jsonl"
    local k
    for k in head step iteration; do
        [ -f "$OUT/smoke-$k.jsonl" ] && cp "$OUT/smoke-$k.jsonl" "$tmp/$k-smoke.jsonl"
    done
    guarded "$log" smoke:report "$PY" -m bench.report --results "$tmp" --out "$OUT/smoke-REPORT.md" --no-plots
    rm -rf "$tmp"
}

stage_nash() {
    need_cuda nash || return 0
    # The cache lives on the machine: back-to-back calls continue it; a fresh machine starts it again.
    local args="${INPO_NASH_ARGS:---arms inpo,inpo_tau0,onpo,dpo --settings style --levels large --max-seeds 2}"
    local left; left="$(remaining)"
    # stop starting runs 150 s before the deadline: a run in flight finishes, the report is written
    # shellcheck disable=SC2086
    guarded "$OUT/nash.log" nash "$PY" -m bench.experiment_nash --model-shape small --workers 1 \
        --out "$OUT/nash" --cache /tmp/inpo-cache/nash --deadline-s $(( left > 150 ? left - 150 : 1 )) $args
    if [ -d "$OUT/nash" ]; then
        tar -cf "$OUT/nash.tar" -C "$OUT" nash && rm -rf "$OUT/nash"
        echo "[run.sh] nash: report in $OUT/nash.tar"
    fi
}

T_ALL=$SECONDS
stage_setup
for s in "$@"; do
    t0=$SECONDS
    case "$s" in
        setup) ;;
        gpu-tests) stage_gpu_tests ;;
        head) stage_head ;;
        step) stage_step ;;
        iteration) stage_iteration ;;
        report) stage_report ;;
        smoke) stage_smoke ;;
        nash) stage_nash ;;
    esac
    echo "[run.sh] stage $s: $(( SECONDS - t0 ))s wall"
done
echo "[run.sh] all stages: $(( SECONDS - T_ALL ))s wall; files in $OUT:"
ls -la "$OUT"
n_files=$(find "$OUT" -type f | wc -l)
[ "$n_files" -le 8 ] || echo "[run.sh] WARNING: $n_files files under \$OUT: the device returns at most 8" >&2
if [ "${#FAILURES[@]}" -gt 0 ]; then
    echo "[run.sh] FAILURES:" >&2
    printf '  %s\n' "${FAILURES[@]}" >&2
    exit 1
fi
echo "[run.sh] OK"
