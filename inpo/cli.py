"""``inpo`` command line (also ``python -m inpo``): a thin dispatcher to each subcommand's module.

Each subcommand module exposes ``main(argv: list[str]) -> int``; it is imported only when used, so
``inpo game`` never pays for transformers and ``inpo train`` never for matplotlib.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import NoReturn

COMMANDS = {
    "train": ("inpo.online.cli", "train a policy: online INPO/ONPO/DPO/IPO/SPPO iterations or offline on JSONL pairs"),
    "eval": ("inpo.eval", "win-rate of a policy against a baseline under a preference oracle, with a bootstrap CI"),
    "game": ("inpo.games.cli", "exact tabular preference games: duality gap of INPO, ONPO and baselines"),
    "fetch-model": ("inpo.models.cli", "fetch + convert a named real model once (smollm2), print its folder"),
}

INTERRUPTED = 130  # exit status after Ctrl-C (128 + SIGINT), as a shell reports a process that SIGINT ended

# Names that are no longer subcommands, with where the user should go instead.
MOVED = {
    "bench": "the benchmarks are scripts in a source checkout's bench/ folder, not installed with the package: from "
             "the repository root run `python -m bench.<name>` (head, head_cpu, step, step_cpu, generation, "
             "sampler_cost, iteration, filter_error, report; `make bench` runs the GPU set)",
}


def dispatch(prog: str, commands: dict[str, tuple[str, str]], argv: list[str], *, noun: str = "command") -> int:
    """Run ``commands[argv[0]]``'s module ``main(argv[1:])``; usage on ``-h``; a near-miss hint on a typo; Ctrl-C
    (KeyboardInterrupt) → one line and exit 130 (``inpo train`` stops at a step boundary with a checkpoint instead,
    once training has started).

    ``commands`` maps a name to ``(module, one-line help)``; a name in :data:`MOVED` says where it went.
    """
    usage = "\n".join([f"usage: {prog} <{noun}> [options]", "", f"{noun}s:"]
                      + [f"  {name:<12} {help_}" for name, (_, help_) in commands.items()]
                      + ["", f"`{prog} <{noun}> --help` shows its options."])
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    name, rest = argv[0], argv[1:]
    if name in MOVED and name not in commands:
        print(f"{prog} {name}: {MOVED[name]}", file=sys.stderr)
        return 2
    if name not in commands:
        import difflib

        near = difflib.get_close_matches(name, commands, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        print(f"{prog}: unknown {noun} {name!r}{hint}\n\n{usage}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(commands[name][0])
        return int(module.main(rest) or 0)
    except KeyboardInterrupt:  # Ctrl-C before a command installs its own handling (imports, model loading...)
        print(f"\n{prog} {name}: interrupted (Ctrl-C)", file=sys.stderr, flush=True)
        return INTERRUPTED


def leave(code: int) -> NoReturn:
    """Exit with ``code`` at once: run the ``atexit`` handlers, flush stdout/stderr, then ``os._exit`` -- skipping
    the interpreter's own teardown, which two cases cannot trust (``python -m inpo`` takes this exit for both):

    * after Ctrl-C (:data:`INTERRUPTED`): a KeyboardInterrupt that escaped ``exec(<str>)`` code (dataclasses build
      their methods that way, so any lazy ``import torch._dynamo``) is marked "unhandled" by CPython (3.10-3.13)
      although :func:`dispatch` caught it, and under ``python -m`` the interpreter then kills itself with SIGINT
      after exiting (status -2, not 130);
    * after a multi-process run (``WORLD_SIZE`` > 1): even after barrier + ``destroy_process_group``, a gloo process
      occasionally aborts in C++ teardown ("terminate called without an active exception", SIGABRT; seen in CI),
      turning a finished run, all its files written, into a failed one.
    """
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be said there
            pass
    os._exit(code)


def must_leave_at_once(code: int) -> bool:
    """Whether ``python -m inpo`` should end through :func:`leave` rather than the interpreter's teardown."""
    return code == INTERRUPTED or int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def main(argv: list[str] | None = None) -> int:
    return dispatch("inpo", COMMANDS, list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    raise SystemExit(main())
