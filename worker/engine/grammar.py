"""Structured outputs for the reference engine, through xgrammar (the grammar library vLLM
uses): a :class:`~openai_compat.structured.Guide` compiles against the model's tokenizer
once (cached), and each request's matcher masks the logits of every step to the tokens
the grammar allows, then advances by the sampled token. When the grammar is complete only
the end-of-sequence tokens remain allowed, so the generation ends there.

JSON is generated without free whitespace (vLLM's ``disable_any_whitespace``): small
models otherwise loop on spaces and newlines until max_tokens. Compilation and masking
run in the engine's threads (torch and xgrammar release the GIL).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

from openai_compat.structured import Guide, GuideKind
from runtime.errors import InvalidArgumentError

_CACHE_SIZE = 64


def _compile(compiler: Any, guide: Guide) -> Any:
    if guide.kind is GuideKind.JSON_SCHEMA:
        return compiler.compile_json_schema(guide.spec, any_whitespace=False)
    if guide.kind is GuideKind.JSON_OBJECT:
        return compiler.compile_json_schema('{"type": "object"}', any_whitespace=False)
    if guide.kind is GuideKind.REGEX:
        return compiler.compile_regex(guide.spec)
    if guide.kind is GuideKind.CHOICE:
        alternatives = " | ".join(json.dumps(c) for c in guide.choices)
        return compiler.compile_grammar(f"root ::= {alternatives}")
    return compiler.compile_grammar(guide.spec)


class GuideMatcher:
    """One request's grammar state: :meth:`mask` before sampling, :meth:`accept` after."""

    def __init__(self, compiled: Any, vocab_size: int) -> None:
        import xgrammar

        self._xgr = xgrammar
        self._matcher = xgrammar.GrammarMatcher(compiled)
        self._bitmask = xgrammar.allocate_token_bitmask(1, vocab_size)

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` (1-D) with the tokens the grammar forbids at -inf."""
        logits = logits.clone()
        self._matcher.fill_next_token_bitmask(self._bitmask)
        self._xgr.apply_token_bitmask_inplace(
            logits.unsqueeze(0), self._bitmask, vocab_size=logits.shape[0]
        )
        return logits

    def accept(self, token: int) -> None:
        """Advance by the sampled token (a token after completion is ignored)."""
        if not self._matcher.is_terminated():
            self._matcher.accept_token(token)

    @property
    def done(self) -> bool:
        """Whether the grammar is complete (it accepted an end-of-sequence token)."""
        return bool(self._matcher.is_terminated())


class GrammarCache:
    """Compiled guides of one model's tokenizer (xgrammar is imported on first use)."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Sequence[int]) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._stop_token_ids = list(stop_token_ids)
        self._compiler: Any = None
        self._compiled: OrderedDict[Guide, Any] = OrderedDict()
        self._lock = threading.Lock()

    def matcher(self, guide: Guide) -> GuideMatcher:
        """A fresh matcher for ``guide`` (compiled once; InvalidArgumentError when the
        schema, regular expression or grammar does not compile)."""
        with self._lock:
            compiled = self._compiled.get(guide)
            if compiled is None:
                compiled = self._compile(guide)
                self._compiled[guide] = compiled
                if len(self._compiled) > _CACHE_SIZE:
                    self._compiled.popitem(last=False)
            else:
                self._compiled.move_to_end(guide)
        return GuideMatcher(compiled, self._vocab_size)

    def _compile(self, guide: Guide) -> Any:
        import xgrammar

        if self._compiler is None:
            info = xgrammar.TokenizerInfo.from_huggingface(
                self._tokenizer, vocab_size=self._vocab_size, stop_token_ids=self._stop_token_ids
            )
            self._compiler = xgrammar.GrammarCompiler(info, max_threads=1)
        try:
            return _compile(self._compiler, guide)
        except (RuntimeError, ValueError) as exc:
            raise InvalidArgumentError(
                f"structured output: the {guide.kind.value.replace('_', ' ')} cannot be"
                f" compiled: {str(exc)[:200]}"
            ) from exc
