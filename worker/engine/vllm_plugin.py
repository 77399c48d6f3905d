"""Helios' vLLM plugin: vLLM calls :func:`register` in every process it starts (the
``vllm.general_plugins`` entry point in pyproject.toml), whichever way it starts them."""

from __future__ import annotations


def register() -> None:
    """The zero-copy weight loader (load_format "helios") and the load-phase timers."""
    from worker.engine import vllm_loader, vllm_phases

    vllm_loader.register()
    vllm_phases.install()
