"""FSDP2 on CPU: two gloo processes (torch.multiprocessing) train like one process.

The data-parallel step splits each step's pairs between the ranks; FSDP2 averages gradients over ranks and
the step weights each rank's loss by its share of the global pairs, so the loss trajectory must equal the
single-process one up to float reordering.
"""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from tests.test_online import _pairs_file, model_dir, read_metrics  # noqa: F401  (fixture)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, args: list[str], errfile: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        from inpo.train.cli import main

        rc = main(args)
        if rc != 0:
            raise RuntimeError(f"rank {rank}: inpo train returned {rc}")
    except BaseException as exc:  # report to the parent, which asserts on it
        with open(errfile + f".{rank}", "w") as f:
            f.write(repr(exc))
        raise


def _args(model_dir, data, out):
    return ["--model", model_dir, "--data", str(data), "--output", str(out), "--objective", "inpo", "--epochs", "2",
            "--batch-pairs", "4", "--lr", "3e-3", "--impl", "torch", "--progress", "false", "--threads", "1"]


def test_fsdp2_two_processes_match_single_process(model_dir, tmp_path):
    from inpo.train.cli import main

    data = _pairs_file(tmp_path / "pairs.jsonl", n=12)
    assert main(_args(model_dir, data, tmp_path / "single")) == 0
    err = str(tmp_path / "err")
    mp.spawn(_worker, args=(2, _free_port(), _args(model_dir, data, tmp_path / "fsdp"), err), nprocs=2, join=True)
    errors = [p.read_text() for p in tmp_path.glob("err.*")]
    assert not errors, errors
    single = [r for r in read_metrics(tmp_path / "single") if r["kind"] == "step"]
    fsdp = [r for r in read_metrics(tmp_path / "fsdp") if r["kind"] == "step"]
    assert len(single) == len(fsdp) == 6
    for a, b in zip(single, fsdp):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3)
    assert single[-1]["loss"] < single[0]["loss"]
    # the FSDP run's export loads back as a plain transformers model with the same weights
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "single" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "fsdp" / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4)
