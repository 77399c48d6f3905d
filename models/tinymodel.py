"""Helios' own tiny chat model, built locally with no network.

Tests, the local mesh (``helios up``) and the benchmarks need a real model in the
Hugging Face layout, but nothing may be downloaded. So this module *builds* one: a
byte-level BPE tokenizer trained on an embedded English corpus, and a randomly
initialised (seeded) two-layer Llama. The output is gibberish, but every piece of the
serving path is exercised for real: the tokenizer round-trips text, the chat template
renders, generation stops on ``<|im_end|>``, and engines such as vLLM load it unchanged
(head_dim is 32 because vLLM's CPU attention kernels reject 16).

The build is deterministic: the same parameters and seed give byte-identical weights,
so a test can compare outputs across runs, and a rebuild is skipped entirely when the
directory already holds a complete model built from the same parameters.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

# The completion marker holds the hash of the build parameters here.
from models.model_dirs import COMPLETE_MARKER, move_into_place
from runtime.config import helios_home

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

__all__ = [
    "BOS_TOKEN",
    "CHAT_TEMPLATE",
    "COMPLETE_MARKER",
    "DEFAULT_MODEL_NAME",
    "EOS_TOKEN",
    "IM_END_TOKEN",
    "IM_START_TOKEN",
    "PAD_TOKEN",
    "UNK_TOKEN",
    "build_tiny_model",
    "default_model_dir",
    "ensure_default_model",
]

DEFAULT_MODEL_NAME = "helios-tiny-chat"

# Bump when the build recipe changes in a way that changes the produced files, so that
# directories built by an older recipe are rebuilt instead of being trusted.
_BUILD_FORMAT_VERSION = 1

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
PAD_TOKEN = "<|pad|>"
UNK_TOKEN = "<|unk|>"
IM_START_TOKEN = "<|im_start|>"
IM_END_TOKEN = "<|im_end|>"
# Order fixes the ids: the special tokens take ids 0..5, before the 256 byte symbols.
_SPECIAL_TOKENS: tuple[str, ...] = (
    BOS_TOKEN,
    EOS_TOKEN,
    PAD_TOKEN,
    UNK_TOKEN,
    IM_START_TOKEN,
    IM_END_TOKEN,
)

# Special tokens the tokenizer knows beyond bos/eos/pad/unk. Its eos_token is <|im_end|>
# (a chat model ends its turn with it); <|end_of_text|> also stops generation through
# generation_config.json's eos_token_id list.
_ADDITIONAL_SPECIAL_TOKENS: tuple[str, ...] = (EOS_TOKEN, IM_START_TOKEN)

# ChatML turns. The template starts with the bos token itself because chat rendering
# tokenizes with add_special_tokens=False (transformers and vLLM both do), so the
# tokenizer's post-processor does not add it there.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_REQUIRED_FILES: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)

# A few KB of varied English: enough for a few hundred useful BPE merges (common words,
# spaces before words, digits, punctuation) so tokens are not just single bytes.
_CORPUS = """\
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a
single step. She sells sea shells by the sea shore, and the shells she sells are surely
sea shells. How much wood would a woodchuck chuck if a woodchuck could chuck wood?

Hello! How are you today? I am fine, thank you. What time is it? It is 10:45 in the
morning, and the meeting starts at 11:00. Please bring the report, the slides and two
cups of coffee. Can you help me with my homework? Of course, what do you need?

The weather was cold and windy on Monday, warm on Tuesday, and rainy on Wednesday. By
Thursday the sun came back; on Friday we walked to the park, sat under an old oak tree
and watched the children play. On Saturday and Sunday we rested at home.

In 1969, people walked on the Moon for the first time. The distance from the Earth to
the Moon is about 384,400 kilometres. Light travels at roughly 299,792 kilometres per
second, so a signal takes a little more than one second to cross that distance.

Numbers are everywhere: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 20, 42, 100, 256, 1000,
2048, 3.14, 2.718, 1/2, 3/4, 50%, 99.9%, $5.00, $19.99 and 1,000,000. The answer is 42.
Add 2 and 3 to get 5; multiply 6 by 7 to get 42; divide 100 by 4 to get 25.

A server receives a request, checks the input, runs the model and streams the answer
back to the client. If the client goes away, the server stops the work and frees the
memory. When the queue is full, new requests wait; when a worker fails, another one
takes over. Every token counts, and every second of latency matters to the user.

Once upon a time there was a small robot who wanted to learn how to write poems. It read
every book in the library, from the first page to the last. "Words are like stars," it
said, "there are many of them, but only a few make a picture." The librarian smiled.

Cooking is simple: wash the rice, add water, bring it to a boil, then cover the pot and
let it simmer for twenty minutes. Chop the onions, the garlic and the peppers; fry them
in a little oil until they are soft. Season with salt, pepper and a pinch of sugar.

Why is the sky blue? Sunlight is scattered by the air, and blue light is scattered more
than red light. Why do leaves change colour in autumn? The green fades, and the yellow
and orange that were hidden all summer finally show. Nature is full of small wonders.

The library opens at nine o'clock and closes at six. Students study, teachers prepare
their lessons, and visitors look for old maps and new novels. Quiet, please! Don't
forget: books must be returned within 14 days; late returns cost $0.25 per day.

Question: what is the capital of France? Answer: Paris. Question: how many legs does a
spider have? Answer: eight. Question: which planet is the largest? Answer: Jupiter.
Question: who wrote the play? Answer: I don't know, but I can look it up for you.

User: Tell me a short story about a cat.
Assistant: A grey cat named Pixel lived above a bakery. Every morning it sat by the
window, counted the loaves, and dreamed of the warm bread it was never allowed to eat.
User: Thanks! Can you make it shorter?
Assistant: Pixel the cat watched the bread and dreamed.

Good software is tested, documented and easy to change. Write small functions, give
them clear names, and handle errors where they happen. Measure before you optimise;
most of the time, the slow part is not where you think it is. Keep it simple.

Rivers run to the sea, mountains rise to the clouds, and cities grow along the roads.
Some people like the quiet of the countryside; others love the noise and the lights of
the city. Everyone, everywhere, needs water, food, shelter, friends and a little hope.
"""


@dataclass(frozen=True)
class _BuildParams:
    """Everything that determines the produced files; hashed into the marker."""

    format_version: int
    seed: int
    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    init_range: float

    def digest(self) -> str:
        payload = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        # The corpus and template shape the tokenizer, so they belong in the hash too.
        h = hashlib.sha256(payload.encode())
        h.update(_CORPUS.encode())
        h.update(CHAT_TEMPLATE.encode())
        return h.hexdigest()


def default_model_dir() -> Path:
    """Where the default tiny model lives: ``$HELIOS_HOME/models/helios-tiny-chat``.

    ``HELIOS_HOME`` defaults to ``~/.cache/helios``.
    """
    return helios_home() / "models" / DEFAULT_MODEL_NAME


def ensure_default_model() -> Path:
    """Build the default tiny model under :func:`default_model_dir` unless it is there."""
    return build_tiny_model(default_model_dir())


def _is_complete(out_dir: Path, digest: str) -> bool:
    """True if ``out_dir`` holds a finished build made from the same parameters."""
    marker = out_dir / COMPLETE_MARKER
    try:
        if marker.read_text().strip() != digest:
            return False
    except OSError:
        return False
    return all((out_dir / f).is_file() for f in _REQUIRED_FILES)


def build_tiny_model(
    out_dir: Path,
    *,
    seed: int = 0,
    name: str = DEFAULT_MODEL_NAME,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 256,
    vocab_size: int = 512,
    max_position_embeddings: int = 2048,
    init_range: float = 0.3,
) -> Path:
    """Build the tiny chat model into ``out_dir`` (Hugging Face layout) and return it.

    Idempotent: if ``out_dir`` already holds a complete build with the same parameters
    it returns at once. The files are written into a temporary directory beside
    ``out_dir`` and renamed into place, so a half-written model is never visible, and
    two processes building at once both end with one complete directory.

    ``init_range`` is the std of the normal weight init. It is much larger than a real
    model's (0.02) on purpose: with tiny weights every position predicts nearly the same
    distribution and greedy decoding repeats one token forever.
    """
    out_dir = Path(out_dir)
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
    if hidden_size // num_heads < 32:
        raise ValueError(
            f"head_dim = hidden_size / num_heads = {hidden_size // num_heads}; must be >= 32"
            " (vLLM's CPU attention kernels reject smaller heads)"
        )
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    if vocab_size < 256 + len(_SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be >= {256 + len(_SPECIAL_TOKENS)} (bytes + specials)")

    params = _BuildParams(
        format_version=_BUILD_FORMAT_VERSION,
        seed=seed,
        name=name,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        init_range=init_range,
    )
    digest = params.digest()
    if _is_complete(out_dir, digest):
        return out_dir

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        _write_model(tmp_dir, params)
        # The marker goes in last: its presence means every other file is complete.
        (tmp_dir / COMPLETE_MARKER).write_text(digest + "\n")
        move_into_place(tmp_dir, out_dir, lambda path: _is_complete(path, digest))
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out_dir


def _write_model(tmp_dir: Path, params: _BuildParams) -> None:
    """Train the tokenizer, initialise the model and save both into ``tmp_dir``."""
    # Imported here: torch and transformers take seconds to import, and callers that
    # only need default_model_dir() (the CLI) should not pay for that.
    import torch
    from safetensors.torch import save_file
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = _train_tokenizer(params.vocab_size, params.max_position_embeddings)
    bos_id = _token_id(tokenizer, BOS_TOKEN)
    eos_id = _token_id(tokenizer, EOS_TOKEN)
    pad_id = _token_id(tokenizer, PAD_TOKEN)
    im_end_id = _token_id(tokenizer, IM_END_TOKEN)
    # Both end-of-text and end-of-turn stop generation: engines read eos ids from
    # generation_config.json (vLLM, transformers' generate) or the tokenizer.
    eos_ids = [im_end_id, eos_id]

    config = LlamaConfig(
        vocab_size=params.vocab_size,
        hidden_size=params.hidden_size,
        intermediate_size=params.intermediate_size,
        num_hidden_layers=params.num_layers,
        num_attention_heads=params.num_heads,
        num_key_value_heads=params.num_kv_heads,
        head_dim=params.hidden_size // params.num_heads,
        max_position_embeddings=params.max_position_embeddings,
        initializer_range=params.init_range,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=bos_id,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
        dtype="float32",
        architectures=["LlamaForCausalLM"],
    )
    # Seed the global RNG right before construction (the weight init draws from it);
    # fork_rng keeps the caller's RNG state untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=bos_id,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
    )
    # The weights are written directly rather than with model.save_pretrained: same
    # safetensors layout, no progress bar on stderr, and nothing in the file but the
    # tensors and {"format": "pt"}, so equal seeds give byte-identical files.
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_dir / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(tmp_dir)
    model.generation_config.save_pretrained(tmp_dir)
    tokenizer.save_pretrained(tmp_dir)
    _finish_tokenizer_files(tmp_dir)
    _finish_config(tmp_dir, params)
    # mkdtemp makes a 0700 directory; a model is meant to be read by other users
    # (containers, services running under their own accounts).
    os.chmod(tmp_dir, 0o755)
    for f in tmp_dir.iterdir():
        os.chmod(f, 0o644)


def _token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    assert isinstance(token_id, int), token
    return token_id


def _train_tokenizer(vocab_size: int, max_position_embeddings: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on the embedded corpus; return a PreTrainedTokenizerFast.

    Deterministic: BPE training ranks merges by count and breaks ties by the pair
    itself, so the same corpus always gives the same vocabulary.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(_SPECIAL_TOKENS),
        # All 256 byte symbols, so any text (any language, emoji) can be encoded.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # One training "sequence" per paragraph.
    paragraphs = [p.strip() for p in _CORPUS.split("\n\n") if p.strip()]
    tok.train_from_iterator(paragraphs, trainer=trainer)
    bos_id = tok.token_to_id(BOS_TOKEN)
    # Raw prompts start with bos, like Llama's tokenizers: encode("hi") = [bos, ...].
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=IM_END_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        additional_special_tokens=list(_ADDITIONAL_SPECIAL_TOKENS),
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=max_position_embeddings,
        padding_side="left",
    )


def _finish_tokenizer_files(tmp_dir: Path) -> None:
    """Make the tokenizer files readable by transformers 4 and 5 (and so by vLLM).

    transformers 5 names the class ``TokenizersBackend`` and lists extra special tokens
    as ``extra_special_tokens``; transformers 4 knows neither, but both understand
    ``PreTrainedTokenizerFast`` and ``additional_special_tokens``. Newer versions write the
    chat template only to ``chat_template.jinja``; older readers look for it in
    ``tokenizer_config.json``, so it goes in both. ``special_tokens_map.json`` is no
    longer written by default; write it.
    """
    cfg_path = tmp_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("backend", None)
    cfg.pop("extra_special_tokens", None)
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["additional_special_tokens"] = list(_ADDITIONAL_SPECIAL_TOKENS)
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg["clean_up_tokenization_spaces"] = False
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")

    special = {
        "bos_token": BOS_TOKEN,
        "eos_token": IM_END_TOKEN,
        "pad_token": PAD_TOKEN,
        "unk_token": UNK_TOKEN,
        "additional_special_tokens": list(_ADDITIONAL_SPECIAL_TOKENS),
    }
    (tmp_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def _finish_config(tmp_dir: Path, params: _BuildParams) -> None:
    """Add the model name and the legacy ``torch_dtype`` key to config.json.

    transformers 5 writes ``dtype``; readers built against transformers 4 look for
    ``torch_dtype``. Both say float32.
    """
    path = tmp_dir / "config.json"
    cfg = json.loads(path.read_text())
    cfg["torch_dtype"] = "float32"
    cfg["dtype"] = "float32"
    cfg["_name_or_path"] = params.name
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
