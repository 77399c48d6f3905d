"""vLLM's weight loading: Helios' zero-copy loader (load_format "helios") against vLLM's
default safetensors loader and dd on the same files (issue 14). Prints a table.

    .venv/bin/python bench/vllm_loader_bench.py [--model DIR] [--rounds 5]

Per round, interleaved, each way reads every tensor of the checkpoint and copies it into
a tensor of the model's dtype shaped like it (what vLLM's weight loaders do with each
tensor they are handed), so the rows differ only in how the tensors are read:
- dd: the files' bytes, 16 MiB blocks, to /dev/null (no tensors, no copies);
- vllm: vLLM's safetensors_weights_iterator (its default loader's path);
- helios: worker/engine/vllm_loader.mapped_weights (the files' mappings).
"cold": the files' pages dropped from the page cache first (posix_fadvise DONTNEED; the
pages of a file another process maps may stay); "warm": just read. Then the real engine:
vLLM's own "Loading weights took" for one AsyncLLM start with each load format.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

from worker.engine.vllm_loader import mapped_weights  # noqa: E402

DEFAULT_MODEL = Path.home() / ".cache" / "helios" / "models" / "smollm2-135m-instruct"


def drop_from_page_cache(files: list[str]) -> None:
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def vllm_weights(files: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    from vllm.model_executor.model_loader.weight_utils import safetensors_weights_iterator

    return safetensors_weights_iterator(files, False)


def copy_into_parameters(weights: Iterator[tuple[str, torch.Tensor]], dtype: torch.dtype) -> int:
    copied = 0
    for _, tensor in weights:
        target = torch.empty(tensor.shape, dtype=dtype)
        target.copy_(tensor)
        copied += target.nbytes
    return copied


def dd(files: list[str]) -> int:
    for path in files:
        subprocess.run(
            ["dd", f"if={path}", "of=/dev/null", "bs=16M"], check=True, capture_output=True
        )
    return sum(os.path.getsize(p) for p in files)


def timed(run: Callable[[], int]) -> tuple[float, int]:
    start = time.perf_counter()
    size = run()
    return time.perf_counter() - start, size


def engine_weights_seconds(model: Path, load_format: str) -> str:
    """vLLM's own figure for one engine start with ``load_format``."""
    code = f"""
import asyncio
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.v1.engine.async_llm import AsyncLLM
async def main():
    llm = AsyncLLM.from_engine_args(AsyncEngineArgs(model={str(model)!r}, enforce_eager=True,
        load_format={load_format!r}, max_model_len=2048, max_num_seqs=4))
    llm.shutdown()
if __name__ == "__main__":
    asyncio.run(main())
"""
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )
    found = re.findall(r"Loading weights took ([0-9.]+) seconds", run.stdout + run.stderr)
    if not found:
        sys.stderr.write(run.stderr[-3000:])
    return f"{found[-1]} s" if found else f"not found (exit {run.returncode})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--no-engine", action="store_true", help="skip the AsyncLLM starts")
    args = parser.parse_args()
    files = sorted(str(p) for p in args.model.glob("*.safetensors"))
    dtype = getattr(torch, args.dtype)
    ways: dict[str, Callable[[], int]] = {
        "dd": lambda: dd(files),
        "vllm": lambda: copy_into_parameters(vllm_weights(files), dtype),
        "helios": lambda: copy_into_parameters(mapped_weights(files), dtype),
    }
    seconds: dict[tuple[str, str], list[float]] = {}
    sizes: dict[str, int] = {}
    for _ in range(args.rounds):
        for state in ("cold", "warm"):
            for name, way in ways.items():
                if state == "cold":
                    drop_from_page_cache(files)
                elapsed, sizes[name] = timed(way)
                seconds.setdefault((name, state), []).append(elapsed)
    total = sum(os.path.getsize(p) for p in files)
    print(f"{args.model} ({len(files)} file(s), {total / 2**20:.1f} MiB), median of {args.rounds}")
    print("| way | page cache | seconds | GB/s of file | bytes handed on |")
    print("|---|---|---|---|---|")
    for (name, state), values in seconds.items():
        median = statistics.median(values)
        print(f"| {name} | {state} | {median:.3f} | {total / median / 1e9:.2f} | {sizes[name]:,} |")
    if not args.no_engine:
        print()
        print("| AsyncLLM load_format | vLLM's 'Loading weights took' |")
        print("|---|---|")
        for load_format in ("auto", "helios"):
            print(f"| {load_format} | {engine_weights_seconds(args.model, load_format)} |")


if __name__ == "__main__":
    main()
