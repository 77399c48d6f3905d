"""The prompts of a completions request, in every form OpenAI (and vLLM) take them: a
string, a list of strings, a list of token ids, or a list of lists of token ids.

Domain only. Sizes are checked before anything tokenizes: at most :data:`MAX_PROMPTS`
prompts, their text together at most :data:`runtime.limits.MAX_PROMPT_BYTES`, their token
ids together at most :data:`MAX_PROMPT_TOKEN_IDS`. Whether each id is in the model's
vocabulary is the engine's check.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from runtime.errors import InvalidArgumentError
from runtime.limits import MAX_PROMPT_BYTES

# A prompt: text, or its token ids.
Prompt = str | tuple[int, ...]

# Prompts of one request (each gets n choices; the choices together are capped too).
MAX_PROMPTS = 64
# Token ids of all prompts together: no prompt holds more tokens than bytes of text.
MAX_PROMPT_TOKEN_IDS = MAX_PROMPT_BYTES // 4
# Token ids are int32 in every tokenizer served; larger numbers are a client's mistake.
MAX_TOKEN_ID = 2**31 - 1
_FORMS = "a string, a list of strings, a list of token ids or a list of lists of token ids"


def _is_token_id(value: Any) -> bool:
    """An integral JSON number (protobuf's Value delivers every number as a float)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and float(value).is_integer()
        and 0 <= value <= MAX_TOKEN_ID
    )


def _ids(field: str, values: Sequence[Any]) -> tuple[int, ...]:
    if not values:
        raise InvalidArgumentError(f"{field}: a list of token ids must not be empty")
    if not all(_is_token_id(v) for v in values):
        raise InvalidArgumentError(f"{field}: token ids must be integers in [0, {MAX_TOKEN_ID}]")
    return tuple(int(v) for v in values)


def completion_prompts(raw: Any) -> tuple[Prompt, ...]:
    """The prompts of a completions request, in order."""
    if isinstance(raw, str):
        items: list[Any] = [raw]
    elif isinstance(raw, list) and raw and all(not isinstance(v, list | str) for v in raw):
        items = [raw]  # one prompt as token ids
    elif isinstance(raw, list) and raw:
        items = raw
    else:
        raise InvalidArgumentError(f"prompt: must be {_FORMS}, and not empty")
    if len(items) > MAX_PROMPTS:
        raise InvalidArgumentError(f"prompt: at most {MAX_PROMPTS} prompts, got {len(items)}")
    prompts: list[Prompt] = []
    text_bytes = token_ids = 0
    for index, item in enumerate(items):
        field = "prompt" if len(items) == 1 else f"prompt[{index}]"
        if isinstance(item, str):
            if not item:
                raise InvalidArgumentError(f"{field}: must not be empty")
            text_bytes += len(item) if item.isascii() else len(item.encode("utf-8", "replace"))
            if text_bytes > MAX_PROMPT_BYTES:
                raise InvalidArgumentError(
                    f"prompt: at most {MAX_PROMPT_BYTES} bytes of text are allowed"
                )
            prompts.append(item)
        elif isinstance(item, list):
            token_ids += len(item)
            if token_ids > MAX_PROMPT_TOKEN_IDS:
                raise InvalidArgumentError(
                    f"prompt: at most {MAX_PROMPT_TOKEN_IDS} token ids are allowed"
                )
            prompts.append(_ids(field, item))
        else:
            raise InvalidArgumentError(f"prompt: must be {_FORMS}")
    return tuple(prompts)
