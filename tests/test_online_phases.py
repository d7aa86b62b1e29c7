"""The online package's phase machinery: one cached-phase rule (rank 0 decides whether a phase's file exists, every
rank follows), one Shard (the single-process path is the world of one), and resume at the checkpoint's next phase
after a crash in any phase of an iteration gives the uninterrupted run's records and weights."""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from inpo.online.cache import JSONL, cached_phase
from inpo.online.shard import Shard
from tests.test_online import micro_args, model_dir, read_metrics  # noqa: F401  (fixture)


class _Rank(Shard):
    """A rank whose broadcasts return what rank 0 said (``main_has``), without a process group."""

    def __init__(self, rank, world, main_has: bool):
        super().__init__(rank, world)
        object.__setattr__(self, "main_has", main_has)

    def from_main(self, value):
        return self.main_has if not self.is_main else value


def test_cached_phase_computes_writes_then_loads(tmp_path):
    path, calls = tmp_path / "x.jsonl", []

    def compute():
        calls.append(1)
        return [{"a": 1}]

    assert cached_phase(path, JSONL, compute, Shard()) == [{"a": 1}] and path.is_file()
    assert cached_phase(path, JSONL, compute, Shard()) == [{"a": 1}]
    assert len(calls) == 1  # the second call read the file


def test_cached_phase_every_rank_follows_rank_0(tmp_path):
    """A rank that sees a file rank 0 does not see computes (the computation may be collective), and writes nothing;
    a rank that does not see a file rank 0 sees loads it (a shared filesystem is required)."""
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"stale": True}) + "\n")
    assert cached_phase(path, JSONL, lambda: [{"fresh": 1}], _Rank(1, 2, main_has=False)) == [{"fresh": 1}]
    assert json.loads(path.read_text()) == {"stale": True}  # only rank 0 writes
    assert cached_phase(path, JSONL, lambda: pytest.fail("computed"), _Rank(1, 2, main_has=True)) == [{"stale": True}]


@pytest.mark.parametrize("n,world", [(10, 3), (2, 3), (7, 1), (0, 2)])
def test_shard_blocks_cover_the_items_in_order(n, world):
    items = list(range(n))
    blocks = [Shard(r, world).block(items) for r in range(world)]
    assert [x for b in blocks for x in b] == items
    sizes = [len(b) for b in blocks]
    assert sizes == sorted(sizes, reverse=True) and max(sizes) - min(sizes) <= 1
    assert Shard(0, world).seed(5) == 5 and len({Shard(r, world).seed(5) for r in range(world)}) == world


def test_one_process_is_a_world_of_one():
    s = Shard.current()
    assert (s.rank, s.world) == (0, 1)
    assert s.gather("x") == ["x"] and s.from_main(3) == 3
    with pytest.raises(KeyError):  # the caller's own exception, unchanged
        s.on_main(lambda: {}["missing"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Unpicklable(Exception):
    def __init__(self, a, b):
        super().__init__(a)


def _shard_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        s = Shard.current()
        got = {"shard": [s.rank, s.world], "gather": s.gather(rank * 10), "result": s.on_main(lambda: rank + 100)}

        def fail():
            raise ValueError(f"bad input seen by rank {rank}")

        def fail_unpicklably():
            raise _Unpicklable(1, 2)

        for key, fn in (("error", fail), ("unpicklable", fail_unpicklably)):
            try:
                s.on_main(fn)
            except Exception as exc:  # noqa: BLE001 - what each rank raised is the result
                got[key] = [type(exc).__name__, str(exc)]
        with open(f"{out}.{rank}", "w") as f:
            json.dump(got, f)
    finally:
        dist.barrier()
        dist.destroy_process_group()
    from inpo.cli import leave

    leave(0)  # gloo's C++ teardown occasionally aborts a finished process (inpo.cli.leave)


def test_shard_under_two_processes(tmp_path):
    """Every rank gets rank 0's result and rank 0's exception (the same type: the CLI maps it to the same exit code
    on every rank); an exception that does not unpickle still reaches every rank as a RuntimeError."""
    out = str(tmp_path / "got")
    mp.spawn(_shard_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    got = [json.load(open(f"{out}.{r}")) for r in range(2)]
    assert [g["shard"] for g in got] == [[0, 2], [1, 2]]
    assert all(g["gather"] == [0, 10] and g["result"] == 100 for g in got)
    assert all(g["error"] == ["ValueError", "bad input seen by rank 0"] for g in got)
    assert got[0]["unpicklable"][0] == "_Unpicklable" and got[1]["unpicklable"][0] == "RuntimeError"


# -- resume after a crash in each phase of iteration 1 ----------------------------------------------------------

_TIMING = {"peak_mem_bytes", "mfu", "tokens_per_s"}


def _records(out):
    return [{k: v for k, v in r.items() if k not in _TIMING and not k.endswith("_s")} for r in read_metrics(out)]


def _crash_in(monkeypatch, module, name):
    """Make ``module.name`` raise once iteration 1's files show it is running in iteration 1."""
    real = getattr(module, name)

    def crashing(*a, **k):
        if _crash_in.out is not None and (_crash_in.out / "iter_001" / "samples.jsonl").is_file():
            raise SystemExit(f"crash in {name}")
        return real(*a, **k)

    monkeypatch.setattr(module, name, crashing)


@pytest.fixture(scope="module")
def uninterrupted(model_dir, tmp_path_factory):
    from inpo.online.cli import main

    out = tmp_path_factory.mktemp("online_full") / "run"
    assert main(micro_args(model_dir, out, "--iterations", "2")) == 0
    return out


@pytest.mark.parametrize("phase", ["rank", "precompute", "train", "export", "evaluate"])
def test_a_crash_in_any_phase_resumes_to_the_uninterrupted_run(model_dir, uninterrupted, tmp_path, monkeypatch,
                                                               phase):
    import inpo.online.evaluate
    import inpo.online.export
    import inpo.online.precompute
    import inpo.online.rank
    import inpo.online.train
    from inpo.online.cli import main

    target = {"rank": (inpo.online.rank, "rank_responses"), "precompute": (inpo.online.precompute, "precompute_logps"),
              "train": (inpo.online.train, "train_phase"), "export": (inpo.online.export, "export_final"),
              "evaluate": (inpo.online.evaluate, "win_rate")}[phase]
    out = tmp_path / "run"
    _crash_in.out = out
    _crash_in(monkeypatch, *target)
    with pytest.raises(SystemExit, match=f"crash in {target[1]}"):
        main(micro_args(model_dir, out, "--iterations", "2"))
    _crash_in.out = None
    assert main(micro_args(model_dir, out, "--iterations", "2", "--resume")) == 0
    assert _records(out) == _records(uninterrupted)
    for name in ("final/model.safetensors", "iter_001/policy/model.safetensors", "iter_001/logps.safetensors",
                 "iter_001/data.jsonl", "iter_001/eval_responses.jsonl"):
        assert (out / name).read_bytes() == (uninterrupted / name).read_bytes(), name


_crash_in.out = None
