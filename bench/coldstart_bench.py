"""Cold starts on the real engine (issue 14): `helios up` to ready, and an evicted model's
way back to its first token, with the load's phases.

Each round starts `helios up` (the default model; `--engine auto` unless told otherwise),
times it to ready, evicts the chat model (admin API), sends one streamed chat request and
times its first token (the model comes back from storaged's RAM tier), then reads the
reload's phases from GET /v1/status. Medians over the rounds. Run by hand:

    .venv/bin/python bench/coldstart_bench.py --rounds 3 [--engine vllm] [-- extra up flags]

The first round after a fresh HELIOS_HOME also converts the default model; run once
before measuring (caches warm, as the issue's figures ask).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
UP_TIMEOUT_S = 600.0


def _up(
    engine: str, extra: list[str], state: Path
) -> tuple[subprocess.Popen[bytes], dict[str, Any], float]:
    ready = state / "ready.json"
    command = [sys.executable, "-m", "cli.main", "up", "--port", "0", "--engine", engine]
    command += ["--ready-file", str(ready), "--state-dir", str(state / "state"), *extra]
    started = time.monotonic()
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    while not ready.exists():
        if process.poll() is not None or time.monotonic() - started > UP_TIMEOUT_S:
            process.kill()
            raise SystemExit(f"helios up did not come up (logs: {state / 'state' / 'logs'})")
        time.sleep(0.2)
    return process, json.loads(ready.read_text()), time.monotonic() - started


def _first_token_after_evict(info: dict[str, Any], key: str) -> tuple[float, dict[str, float]]:
    base = info["rest_url"]
    model = info["models"][0]
    admin = {"authorization": f"Bearer {key}"}
    with httpx.Client(timeout=UP_TIMEOUT_S) as client:
        evicted = client.delete(f"{base}/admin/evict/{model}", headers=admin)
        evicted.raise_for_status()
        body = {
            "model": model,
            "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 8,
            "stream": True,
        }
        started = time.monotonic()
        first = 0.0
        with client.stream("POST", f"{base}/chat/completions", json=body) as stream:
            for line in stream.iter_lines():
                if line.startswith("data: ") and '"content"' in line and not first:
                    first = time.monotonic() - started
        status = client.get(f"{base}/status", headers=admin).json()
    phases: dict[str, Any] = next(
        (
            m.get("load_phase_seconds") or m.get("loadPhaseSeconds") or {}
            for m in status.get("models", [])
            if m["model"] == model
        ),
        {},
    )
    return first, {k: float(v) for k, v in phases.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engine", default="auto")
    parser.add_argument("extra", nargs="*", help="more `helios up` flags (after --)")
    args = parser.parse_args()
    home = Path(os.environ.get("HELIOS_HOME", Path.home() / ".cache" / "helios"))
    key = os.environ.get("HELIOS_ADMIN_KEY") or (home / "admin-key").read_text().strip()
    ups, firsts, all_phases = [], [], []
    for round_ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="coldstart-") as tmp:
            process, info, up_s = _up(args.engine, args.extra, Path(tmp))
            try:
                first_s, phases = _first_token_after_evict(info, key)
            finally:
                process.send_signal(2)
                process.wait(timeout=60)
        ups.append(up_s)
        firsts.append(first_s)
        all_phases.append(phases)
        print(
            f"round {round_ + 1}: up {up_s:.1f} s, evicted -> first token {first_s:.2f} s,"
            f" reload phases {phases}",
            flush=True,
        )
    print()
    print(f"| figure (engine {args.engine}, median of {args.rounds}) | seconds |")
    print("|---|---|")
    print(f"| helios up -> ready | {statistics.median(ups):.1f} |")
    print(f"| evict, then one request -> first token | {statistics.median(firsts):.2f} |")
    for name in sorted({n for p in all_phases for n in p}):
        values = [p[name] for p in all_phases if name in p]
        print(f"| reload phase: {name} | {statistics.median(values):.2f} |")


if __name__ == "__main__":
    main()
