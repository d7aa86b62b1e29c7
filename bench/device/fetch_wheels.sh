#!/usr/bin/env bash
# Run HERE (the CPU machine, which reaches the package registries), from anywhere in the repo:
#     bash bench/device/fetch_wheels.sh
# Downloads into <repo>/.whl/ the x86-64 CPython 3.12 wheels the GPU device machine lacks for the bench baselines:
# Liger-Kernel, cut-cross-entropy and TRL, plus exactly those of their runtime dependencies that the device image
# does not hold (TRL -> datasets -> dill, multiprocess). Everything else they need (accelerate, pandas, pyarrow,
# xxhash, fsspec, huggingface-hub, psutil, jinja2, torch, triton, transformers) is already in the image
# (/work/.library/device/KINDS.md, "Python packages already there").
# Idempotent: wheels already present are kept, any other version of a pinned package is removed (two versions of
# one package stop the whole install there). `.whl/` is git-ignored through .git/info/exclude and travels to the
# device only when a `run` call names it in `carry`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="${INPO_PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi

# name==version, one a line. Versions chosen for torch 2.11 / triton 3.6 / transformers 5.x (the device image).
PINS=(
    "liger-kernel==0.8.5"         # needs torch>=2.1.2, triton>=2.3.1
    "cut-cross-entropy==25.1.1"   # needs torch, triton
    "trl==1.16.0"                 # needs transformers>=4.56.2, accelerate>=1.10.1, datasets>=4.7 (+ image packages)
    "datasets==5.2.0"             # TRL's; needs dill<0.4.2, multiprocess<0.70.20, pyarrow>=24, fsspec<=2026.9.0
    "dill==0.4.1"                 # datasets'
    "multiprocess==0.70.19"       # datasets'; needs dill>=0.4.1
)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)

mkdir -p .whl
if [ -d .git ]; then
    mkdir -p .git/info
    touch .git/info/exclude
    grep -qxF '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
fi

norm() { echo "$1" | tr 'A-Z-.' 'a-z__'; }   # wheel file names use the normalised project name

missing=()
for pin in "${PINS[@]}"; do
    name="${pin%%==*}"; version="${pin##*==}"; stem="$(norm "$name")"
    # drop other versions of this package
    for f in .whl/"$stem"-*.whl; do
        [ -e "$f" ] || continue
        case "$(basename "$f")" in "$stem-$version-"*) ;; *) echo "removing other version: $f"; rm -f "$f" ;; esac
    done
    if compgen -G ".whl/$stem-$version-*.whl" > /dev/null; then
        echo "have   $pin"
        continue
    fi
    args=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp -d .whl -q)
    for p in "${PLATFORMS[@]}"; do args+=(--platform "$p"); done
    echo "fetch  $pin"
    if ! "$PY" -m pip download "${args[@]}" "$pin" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); then
        echo "NO WHEEL for $pin (cp312 manylinux x86-64): its baseline is skipped on the device" >&2
        missing+=("$pin")
    fi
done

echo
echo "wheels in $ROOT/.whl:"
for f in .whl/*.whl; do awk -v s="$(stat -c %s "$f")" -v f="$f" 'BEGIN { printf "  %8.2f MiB  %s\n", s / 1048576, f }'; done
total=$(du -cb .whl/*.whl | tail -1 | cut -f1)
awk -v t="$total" 'BEGIN { printf "total: %.2f MiB (the whole working tree travels: keep it well under 64 MiB)\n", t / 1048576 }'
if [ "${#missing[@]}" -gt 0 ]; then
    echo "missing (no wheel): ${missing[*]}" >&2
    exit 3
fi
