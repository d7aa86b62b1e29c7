"""``inpo`` command line (also ``python -m inpo``): a thin dispatcher to each subcommand's module.

Each subcommand module exposes ``main(argv: list[str]) -> int``; it is imported only when used, so
``inpo game`` never pays for transformers and ``inpo train`` never for matplotlib.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": ("inpo.train.cli", "train a policy: online INPO/ONPO/DPO/IPO/SPPO iterations or offline on JSONL pairs"),
    "eval": ("inpo.eval", "win-rate of a policy against a baseline under a preference oracle, with a bootstrap CI"),
    "game": ("inpo.games.cli", "exact tabular preference games: duality gap of INPO, ONPO and baselines"),
    "bench": ("inpo.profiling.cli", "benchmarks: head | step | iteration | report"),
}


def _usage() -> str:
    lines = ["usage: inpo <command> [options]", "", "commands:"]
    lines += [f"  {name:<7} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`inpo <command> --help` shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        near = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        print(f"inpo: unknown command {name!r}{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
