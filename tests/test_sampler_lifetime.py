"""The online loop keeps one sampler for the whole run (one vLLM engine): built once, pointed at π_t / π_ref /
π_{t+1} with ``set_policy``, closed at the end -- also when the run fails."""

import pytest

import inpo.generation
import inpo.online.generate
from tests.test_online import micro_args, model_dir  # noqa: F401 - the module fixture


class _Recorder:
    def __init__(self):
        self.built, self.policies, self.closed = 0, [], 0


@pytest.fixture
def recorder(monkeypatch):
    rec = _Recorder()
    real = inpo.generation.make_sampler

    def make(backend, model, tokenizer, **kw):
        rec.built += 1
        sampler = real("hf", model, tokenizer, **kw)
        rec.policies.append(model)
        set_policy, close = sampler.set_policy, sampler.close

        def _set(m):
            rec.policies.append(m)
            set_policy(m)

        def _close():
            rec.closed += 1
            close()

        sampler.set_policy, sampler.close = _set, _close
        return sampler

    monkeypatch.setattr(inpo.online.generate, "make_sampler", make)
    return rec


def test_one_sampler_per_run_pointed_at_each_model(model_dir, tmp_path, recorder):  # noqa: F811
    from inpo.online.cli import main as train_main

    assert train_main(micro_args(model_dir, tmp_path / "run", "--iterations", "2")) == 0
    assert recorder.built == 1 and recorder.closed == 1
    # iteration 0: π_0 generates, π_ref and π_1 are evaluated; iteration 1: π_1 generates, π_2 is evaluated
    assert len(recorder.policies) == 5
    ref = recorder.policies[1]
    assert all(p is not ref for i, p in enumerate(recorder.policies) if i != 1)


def test_the_sampler_is_closed_when_the_run_fails(model_dir, tmp_path, recorder, monkeypatch):  # noqa: F811
    import inpo.online.rank
    from inpo.online.cli import main as train_main

    def boom(*a, **k):
        raise RuntimeError("oracle down")

    monkeypatch.setattr(inpo.online.rank, "rank_responses", boom)
    with pytest.raises(RuntimeError, match="oracle down"):
        train_main(micro_args(model_dir, tmp_path / "run"))
    assert recorder.built == 1 and recorder.closed == 1
