"""Walking-skeleton figures: `helios up` to first token, and CPU-engine tokens/s.

Starts a fresh `helios up --port 0` (its own HELIOS_HOME, so the tiny model is built
too, as on a first run), then through Envoy with the official openai client:
- time from launching `helios up` until the mesh reports ready, and until the first
  streamed token arrives;
- output tokens/s of one stream and of N concurrent streams (ignore_eos, fixed length).

Run by hand: `.venv/bin/python bench/skeleton_bench.py` (prints a table).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai

REPO = Path(__file__).resolve().parents[1]
MESSAGES = [{"role": "user", "content": "Write a long story about the sun."}]


async def stream_tokens(
    client: openai.AsyncOpenAI, model: str, max_tokens: int
) -> tuple[float, int]:
    """(seconds to first content chunk, completion tokens) of one streamed request."""
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    stream = await client.chat.completions.create(
        model=model,
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        max_tokens=max_tokens,
        temperature=0,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - started
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return (first or 0.0), tokens


async def measure(rest_url: str, model: str, max_tokens: int, concurrency: int) -> float:
    client = openai.AsyncOpenAI(base_url=rest_url, api_key="unused", max_retries=0, timeout=600)
    started = time.perf_counter()
    results = await asyncio.gather(
        *(stream_tokens(client, model, max_tokens) for _ in range(concurrency))
    )
    elapsed = time.perf_counter() - started
    await client.close()
    return sum(tokens for _, tokens in results) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp, "up.json")
        launched = time.perf_counter()
        up = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "up", "--port", "0", "--ready-file", str(ready)],
            cwd=REPO,
            env={**os.environ, "HELIOS_HOME": str(Path(tmp, "home"))},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while not ready.exists():
                if up.poll() is not None:
                    raise SystemExit("helios up exited before it was ready")
                time.sleep(0.02)
            up_seconds = time.perf_counter() - launched
            info = json.loads(ready.read_text())
            rest_url, model = info["rest_url"], info["models"][0]
            client = openai.AsyncOpenAI(base_url=rest_url, api_key="unused", max_retries=0)
            ttft, _ = asyncio.run(stream_tokens(client, model, 1))
            first_token_seconds = time.perf_counter() - launched
            single = asyncio.run(measure(rest_url, model, args.max_tokens, 1))
            many = asyncio.run(measure(rest_url, model, args.max_tokens, args.concurrency))
        finally:
            up.send_signal(signal.SIGINT)
            up.wait(timeout=60)
    rows = [
        ("helios up -> mesh ready (fresh HELIOS_HOME, model built)", f"{up_seconds:.2f} s"),
        ("helios up -> first streamed token", f"{first_token_seconds:.2f} s"),
        ("TTFT of that first request (warm mesh)", f"{ttft * 1000:.1f} ms"),
        (f"tokens/s, 1 stream x {args.max_tokens} tokens", f"{single:.0f}"),
        (f"tokens/s, {args.concurrency} streams x {args.max_tokens} tokens", f"{many:.0f}"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"{'measure'.ljust(width)} | value")
    print(f"{'-' * width}-|------")
    for name, value in rows:
        print(f"{name.ljust(width)} | {value}")


if __name__ == "__main__":
    main()
