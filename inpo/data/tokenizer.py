"""The embedded default task's tokenizer: byte-level BPE trained in-process on the generated corpus.

Training takes ~10 ms, but the result is cached on disk (keyed by a hash of the corpus and settings)
so every process sees the very same ids; if the cache cannot be written (read-only checkout) the
tokenizer is trained in memory instead. Chat formatting goes through a jinja ``chat_template``::

    <|bos|><|user|>{prompt}<|assistant|>{response}<|eos|>

Prompts and responses are encoded through this template by :mod:`inpo.data.chat` (the whole conversation,
the response being the difference), like any user tokenizer's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from inpo.data.chat import encode_prompt as _chat_encode_prompt
from inpo.data.chat import stop_token_ids, use_plain_text
from inpo.data.prompts import default_prompts, sft_examples, task_spec
from inpo.models import resolve_model

__all__ = ["default_tokenizer", "load_tokenizer", "resolve_tokenizer", "encode_prompt", "train_tokenizer",
           "default_cache_dir", "SPECIAL_TOKENS", "CHAT_TEMPLATE", "VOCAB_SIZE", "TOKENIZER_FILES"]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")  # a folder with one of these holds a tokenizer

VOCAB_SIZE = 1024
BOS, EOS, PAD, USER, ASSISTANT, SYSTEM = ("<|bos|>", "<|eos|>", "<|pad|>", "<|user|>", "<|assistant|>",
                                          "<|system|>")
SPECIAL_TOKENS = [PAD, BOS, EOS, USER, ASSISTANT, SYSTEM]  # ids 0..5, in this order
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<|system|>{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}<|user|>{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}<|assistant|>{{ message['content'] }}{{ eos_token }}"
    "{% else %}{{ raise_exception('unknown chat role: ' ~ message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_FORMAT_VERSION = 1  # bump when the training recipe changes, to invalidate old caches


def default_cache_dir() -> Path:
    """``<repo>/.cache/tokenizer`` for a source checkout, else ``~/.cache/inpo/tokenizer``."""
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file() and (repo / "inpo").is_dir():
        return repo / ".cache" / "tokenizer"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "inpo" / "tokenizer"


def _corpus() -> list[str]:
    """Every default prompt, a fixed sample of SFT demonstrations and the whole task vocabulary."""
    spec = task_spec()
    vocab = list(spec["topics"]) + list(spec["neutral_adjectives"]) + list(spec["times"]) + list(spec["filler"])
    for family in spec["styles"].values():
        vocab += family
    lines = default_prompts("train") + default_prompts("eval")
    lines += [r for _, r in sft_examples(2000, seed=12345)]
    lines += [" ".join(vocab), " ".join(w.capitalize() for w in vocab)]
    return lines


def train_tokenizer(lines: list[str], *, vocab_size: int = VOCAB_SIZE):
    """Train a byte-level BPE ``PreTrainedTokenizerFast`` with the chat template on ``lines``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   additional_special_tokens=[USER, ASSISTANT, SYSTEM],
                                   padding_side="left", model_max_length=2048)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _cache_key(lines: list[str], vocab_size: int) -> str:
    h = hashlib.sha256(json.dumps([_FORMAT_VERSION, vocab_size, CHAT_TEMPLATE, lines]).encode())
    return h.hexdigest()[:16]


def default_tokenizer(cache_dir: str | os.PathLike | None = None):
    """The default task's tokenizer (vocab 1024, bos/eos/pad, chat template); deterministic and cached.

    The first call trains it (~10 ms) and saves it atomically under ``cache_dir/<corpus-hash>/``;
    later calls load it. An unwritable cache directory falls back to the in-memory tokenizer.
    """
    lines = _corpus()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = root / _cache_key(lines, VOCAB_SIZE)
    if (final / "tokenizer.json").is_file():
        try:
            return load_tokenizer(final)
        except (OSError, ValueError):
            pass  # a corrupt cache entry: retrain below and try to replace it
    tok = train_tokenizer(lines)
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tok-", dir=root))
        tok.save_pretrained(tmp)
        if final.exists():
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.replace(tmp, final)  # atomic: readers see a complete directory or none
        except OSError:  # another process won the race: its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        pass  # read-only cache location: the in-memory tokenizer is just as good
    return tok


def load_tokenizer(path: str | os.PathLike):
    """A tokenizer saved with ``save_pretrained`` in a local directory (never the hub), or a real model's by name
    (``smollm2``: :func:`inpo.models.resolve_model`)."""
    path = Path(resolve_model(path))
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory not found: {str(path)!r}")
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        raise ValueError(f"{str(path)!r} holds no tokenizer (no tokenizer.json / tokenizer_config.json); "
                         "save one with tokenizer.save_pretrained(dir)")
    try:
        if (path / "tokenizer.json").is_file():  # fast path: skips AutoTokenizer's ~1 s of model-registry imports
            from transformers import PreTrainedTokenizerFast as cls
        else:
            from transformers import AutoTokenizer as cls
        tok = cls.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # transformers raises a zoo of types for corrupt files
        raise ValueError(f"could not load the tokenizer in {str(path)!r}: {exc}") from exc
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token  # batching needs a pad id; eos is the usual stand-in
    return tok


def resolve_tokenizer(tokenizer: str | os.PathLike | None = None, model: str | os.PathLike | None = None, *,
                      plain_text: bool = False, model_arg: str = "model", tokenizer_arg: str = "tokenizer=DIR"):
    """The tokenizer a run (or an evaluation) uses, chosen in one order: the ``tokenizer`` folder when given; else
    the tokenizer saved in the ``model`` folder; else, when no model folder is named, the embedded default task's.
    A ``model`` folder without tokenizer files is refused (the default's vocabulary would not fit it), naming
    ``model_arg`` and how to pass one (``tokenizer_arg``). ``plain_text``: encode without a chat template (a base
    model). A tokenizer with no chat template that is not opted into plain text fails here, before anything is
    written (:func:`inpo.data.chat.stop_token_ids`)."""
    model = resolve_model(model)  # a real-model name (smollm2) → its folder, so its own tokenizer is found
    if tokenizer is not None:
        tok = load_tokenizer(tokenizer)
    elif model is not None and any((Path(model) / f).is_file() for f in TOKENIZER_FILES):
        tok = load_tokenizer(model)
    elif model is not None and Path(model).exists():
        raise ValueError(f"{model_arg} {str(model)!r} has no tokenizer files ({' or '.join(TOKENIZER_FILES)}); "
                         f"pass {tokenizer_arg}")
    else:
        tok = default_tokenizer()
    if plain_text:
        use_plain_text(tok)
    stop_token_ids(tok)  # raises the clear "no chat_template" error
    return tok


def encode_prompt(tokenizer, prompt) -> list[int]:
    """Token ids of ``prompt`` through the chat template, ending with the generation prompt
    (:func:`inpo.data.chat.encode_prompt`; responses: :func:`inpo.data.chat.encode_completion`)."""
    return _chat_encode_prompt(tokenizer, prompt)
