"""LoRA adapters in the registry: an import whose files hold a peft adapter_config.json
is an adapter, and an adapter is a model with a base (another registry model, never an
adapter itself). Workers serve it on that base (worker/adapters.py).

The base is what the import says (``ImportModelRequest.base``, ``helios pull --base``),
else the model adapter_config.json's ``base_model_name_or_path`` names: that id when
the registry holds it, else the one registry model whose name (the part after the org)
is that path's last segment -- how an adapter trained on ``HuggingFaceTB/SmolLM2-135M``
or on a local ``.../helios-tiny-chat`` finds ``helios/smollm2-135m`` or
``helios/helios-tiny-chat``. Anything else is refused, asking for the base.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from runtime.errors import FailedPreconditionError, InvalidArgumentError
from runtime.limits import quote
from runtime.model_ids import canonical_model_id

__all__ = ["ADAPTER_CONFIG", "adapter_base"]

ADAPTER_CONFIG = "adapter_config.json"


def adapter_base(config_text: str | None, explicit: str, models: Mapping[str, str]) -> str:
    """The base of an import (``""``: the import is a model, not an adapter).

    ``config_text``: its adapter_config.json (None: it has none); ``explicit``: the base
    the import names; ``models``: every registry model id -> its base ("" for a model).
    """
    if config_text is None:
        if explicit:
            raise InvalidArgumentError(
                f"base: only a LoRA adapter has a base; the files hold no {ADAPTER_CONFIG}"
            )
        return ""
    config = _lora_config(config_text)
    if explicit:
        base = canonical_model_id(explicit)
        if base not in models:
            raise FailedPreconditionError(f"base: {base} is not in the registry; pull it first")
    else:
        named = config.get("base_model_name_or_path")
        found = _named_base(named, models) if isinstance(named, str) else None
        if found is None:
            raise FailedPreconditionError(
                f"the adapter's base_model_name_or_path {quote(str(named))} is no model this"
                " registry holds; name its base with --base org/name (ImportModelRequest.base)"
            )
        base = found
    if models[base]:
        raise InvalidArgumentError(
            f"base: {base} is itself a LoRA adapter (of {models[base]}); name the model"
        )
    return base


def _lora_config(text: str) -> dict[str, object]:
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise InvalidArgumentError(f"{ADAPTER_CONFIG}: not JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise InvalidArgumentError(f"{ADAPTER_CONFIG}: not a JSON object")
    if config.get("peft_type") != "LORA":
        raise InvalidArgumentError(
            f"{ADAPTER_CONFIG}: a {quote(str(config.get('peft_type')))} adapter; only LoRA"
            " adapters are served"
        )
    return config


def _named_base(named: str, models: Mapping[str, str]) -> str | None:
    """The registry model ``base_model_name_or_path`` names (see the module docstring)."""
    try:
        exact = canonical_model_id(named)
    except InvalidArgumentError:  # a local path, most likely
        exact = ""
    if exact in models:
        return exact
    name = named.rstrip("/").rsplit("/", 1)[-1].lower()
    matches = [m for m, base in models.items() if not base and m.split("/", 1)[1] == name]
    return matches[0] if len(matches) == 1 else None
