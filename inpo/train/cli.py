"""``inpo train``: one dataclass config (YAML + ``--key value`` overrides), printed at start; online INPO
iterations (or offline JSONL training); a closing table of win-rates against π_ref per iteration."""

from __future__ import annotations

import sys
import time

from inpo.train.config import EMBEDDED_DEFAULTS, MODEL_DEFAULTS, TrainConfig, config_to_yaml, load_config, parse_overrides
from inpo.train.trl_names import trl_key_notes

USAGE = """usage: inpo train [--config FILE.yaml] [--key value ...] --output DIR [--iterations T] [--max-steps N] [--resume]

Online INPO (or onpo / ipo / dpo / sppo via --objective) on the embedded default task unless --model, --prompts,
--oracle say otherwise; offline on TRL-style JSONL pairs with --data FILE.jsonl. Any config key is an option
(dashes or underscores): e.g. --lr 5e-4 --epochs 1 --k 8 --eta 0.1 --ratio 0. Writes DIR/metrics.jsonl,
DIR/checkpoints/, DIR/iter_*/ and the final policy (save_pretrained + tokenizer) to DIR/final.
Multi-GPU: torchrun --nproc_per_node=N -m inpo train ... (FSDP2; --resume needs the same N and an output
directory every rank can read).

config keys (default):
"""


def _help() -> str:
    import dataclasses

    lines = [USAGE]
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = repr(default)
        if f.name in EMBEDDED_DEFAULTS:  # depends on the model: the embedded task's, or TRL's / the papers'
            with_model = MODEL_DEFAULTS[f.name]
            with_model = " | ".join(f"{v!r} ({k})" for k, v in with_model.items()) if isinstance(with_model, dict) \
                else repr(with_model)
            shown = f"{EMBEDDED_DEFAULTS[f.name]!r}; with --model: {with_model}"
        lines.append(f"  --{f.name.replace('_', '-'):<26} {shown}")
    lines += ["", "  --no-chat-template           plain text for a base model (= --chat-template none)",
              "  objective parameters: --objective_args.NAME VALUE, or --NAME VALUE (e.g. --eta 0.1, --beta 0.1)",
              f"TRL / HF names accepted: {trl_key_notes()}"]
    return "\n".join(lines)


def _table(records: list[dict], console) -> None:
    from rich.table import Table

    table = Table(title="win-rate vs the starting policy π_ref (bootstrap 95% CI, held-out prompts)")
    for col in ("iteration", "win-rate", "95% CI", "pairs", "oracle queries", "wall s"):
        table.add_column(col, justify="right")
    for r in records:
        if "win_rate" not in r:
            continue
        table.add_row(str(r["iteration"]), f"{r['win_rate']:.3f}",  # from 0, like iter_000/ and the progress lines
                      f"[{r['win_rate_ci_low']:.3f}, {r['win_rate_ci_high']:.3f}]", str(r.get("pairs", "")),
                      str(r.get("oracle_queries", "")), f"{r.get('wall_s', 0):.1f}")
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(_help())
        return 0
    given = list(argv)
    config_path = None
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            print("inpo train: error: --config needs a FILE.yaml", file=sys.stderr)
            return 2
        config_path = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    try:
        cfg = load_config(config_path, parse_overrides(argv))
    except (ValueError, FileNotFoundError) as exc:
        print(f"inpo train: error: {exc}", file=sys.stderr)
        return 2
    return _run(cfg, given)


def _resume_command(given: list[str]) -> str:
    import shlex

    args = [a for a in given if a not in ("--resume", "--overwrite")]
    return "inpo train " + shlex.join(args + ["--resume"])


def _run(cfg: TrainConfig, given: list[str]) -> int:
    from rich.console import Console

    from inpo.train.distributed import distributed_session

    console = Console()
    with distributed_session() as is_main:
        if is_main:
            console.print("[bold]inpo train[/bold] config:")
            console.print(config_to_yaml(cfg), end="", markup=False, highlight=False)
        from inpo.online import run_training
        from inpo.train.checkpoint import CheckpointError
        from inpo.train.loop import Interrupted, StopRun, TrainingDiverged

        t0 = time.perf_counter()
        try:
            records = run_training(cfg)
        except Interrupted as stop:
            if is_main:
                print(f"[inpo] {stop}; checkpoint written. Continue with:\n  {_resume_command(given)}",
                      file=sys.stderr, flush=True)
            return stop.exit_code
        except StopRun as stop:
            if is_main:
                console.print(f"[inpo] {stop}; checkpoint written -- continue with --resume")
            return 0
        except (TrainingDiverged, CheckpointError) as exc:
            print(f"inpo train: error: {exc}", file=sys.stderr)
            return 1
        except (ValueError, FileNotFoundError, NotImplementedError, ImportError) as exc:
            print(f"inpo train: error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:  # disk full, permission lost mid-run...: a message, not a traceback
            print(f"inpo train: error: {exc}", file=sys.stderr)
            return 1
        if is_main:
            if any("win_rate" in r for r in records):
                _table(records, console)
            else:  # offline: final loss, the last step's TRL metrics, held-out metrics when there are any
                import json
                from pathlib import Path

                from inpo.train.reporting import run_summary

                mpath = Path(cfg.output) / "metrics.jsonl"
                recs = [json.loads(x) for x in mpath.read_text().splitlines()] if mpath.is_file() else []
                console.print(run_summary(records, [r for r in recs if r.get("kind") == "step"]), markup=False,
                              highlight=False, soft_wrap=True)
            console.print(f"[inpo] done in {time.perf_counter() - t0:.1f} s; final policy in {cfg.output}/final, "
                          f"metrics in {cfg.output}/metrics.jsonl")
    return 0
