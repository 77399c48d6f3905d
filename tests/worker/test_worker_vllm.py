"""The vLLM engine, on the CPU build of vLLM, through a real worker process and the proxy.

One worker process (``python -m worker.server --engine vllm``) serves the tiny model for
the whole module, so vLLM's engine starts once (20-80 s on a small CPU box). Run alone
with ``pytest -m vllm``. Skipped when vLLM is not importable here (it lives in its own
virtual environment or extra: see the worker's README notes).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2
from helios.v1 import inference_pb2, inference_pb2_grpc, worker_pb2_grpc
from helios.v1 import worker_pb2 as pb
from prometheus_client.parser import text_string_to_metric_families
from support.fakes import serve_worker

from cli.processes import ServiceProcess
from models.tinymodel import build_tiny_model
from runtime.errors import FailedPreconditionError, InvalidArgumentError
from worker.batch_sizing import KV_BLOCK_TOKENS
from worker.engine.base import ChatMessage, FinishReason, GenerationRequest, SamplingParams
from worker.engine.transformers_engine import TransformersEngine
from worker.engine.vllm_engine import VllmConfig, VllmEngine, vllm_available
from worker.estimator_client import EstimatorClient

_MISSING = vllm_available()

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(_MISSING is not None, reason=f"vLLM is not importable: {_MISSING}"),
    pytest.mark.asyncio(loop_scope="module"),
]

MODEL = "tiny-vllm"
START_LIMIT_S = 300.0


@dataclass
class Mesh:
    model_dir: Path
    worker: worker_pb2_grpc.WorkerServiceStub
    proxy: inference_pb2_grpc.InferenceServiceStub
    worker_process: ServiceProcess


def vllm_worker(name: str, state_dir: Path, model_dir: Path, *flags: str) -> ServiceProcess:
    """A `python -m worker.server` process serving ``model_dir`` as MODEL on vLLM in
    float32 (exact greedy comparisons), with ``flags`` added."""
    args = ["--engine", "vllm", "--dtype", "float32", *flags, "--model", f"{MODEL}={model_dir}"]
    return ServiceProcess(name=name, module="worker.server", args=args, state_dir=state_dir)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    base = tmp_path_factory.mktemp("vllm-mesh")
    # A long context, so a long generation outlasts a slow client on a loaded machine
    # (the abort test needs the request still running when the client leaves).
    model_dir = build_tiny_model(base / "model", max_position_embeddings=MAX_LEN)
    worker = vllm_worker(
        "worker-vllm", base, model_dir, "--cpu-kvcache-space-gib", "1", "--max-num-seqs", "16"
    )
    proxy: ServiceProcess | None = None
    channels: list[grpc.aio.Channel] = []
    try:
        await worker.start()
        await worker.wait_ready(START_LIMIT_S)
        proxy = ServiceProcess(
            name="proxy",
            module="proxy.server",
            args=["--worker", worker.address, "--heartbeat-interval", "0.2"],
            state_dir=base,
        )
        await proxy.start()
        await proxy.wait_ready(60)
        channels = [
            grpc.aio.insecure_channel(worker.address),
            grpc.aio.insecure_channel(proxy.address),
        ]
        yield Mesh(
            model_dir,
            worker_pb2_grpc.WorkerServiceStub(channels[0]),
            inference_pb2_grpc.InferenceServiceStub(channels[1]),
            worker,
        )
    finally:
        for channel in channels:
            await channel.close(None)
        if proxy is not None:
            await proxy.stop(10)
        await worker.stop(30)


MAX_LEN = 32768
# As long as the context allows: the stream must outlast the heartbeats watching it.
LONG_TOKENS = MAX_LEN - 64


def gen(request_id: str, max_tokens: int, **kind: object) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        request_id=request_id,
        model=MODEL,
        sampling=pb.SamplingParams(
            max_tokens=max_tokens, temperature=0.0, top_p=1.0, ignore_eos=True
        ),
        **kind,  # type: ignore[arg-type]
    )


PROMPTS = ["Once upon a time", "Good software is tested", "Rivers run to the sea, and"]


async def test_engine_processes_start_from_the_fork_server(mesh: Mesh) -> None:
    # --vllm-processes forkserver (the default): the engine core is forked by the
    # worker's fork server (it imported vLLM once), not spawned by the worker itself;
    # it starts its model runner as vLLM does (worker/engine/vllm_processes.py).
    assert mesh.worker_process.process is not None
    worker = psutil.Process(mesh.worker_process.process.pid)
    servers = [
        p for p in worker.children() if "multiprocessing.forkserver" in " ".join(p.cmdline())
    ]
    assert len(servers) == 1, [p.cmdline() for p in worker.children()]
    cores = servers[0].children()  # forked: the server's command line, not a title
    assert len(cores) == 1, [(p.name(), p.cmdline()) for p in cores]
    assert cores[0].children(), "the engine core started no model runner"
    assert not [p for p in worker.children() if "spawn_main" in " ".join(p.cmdline())]


async def test_the_load_is_timed_by_phase_inside_vllm(mesh: Mesh) -> None:
    # worker/engine/vllm_phases.py: weights and KV cache timed in vLLM's model runner.
    beat = await mesh.worker.Heartbeat(pb.HeartbeatRequest())
    (model,) = [m for m in beat.models if m.model == MODEL]
    phases = dict(model.load_phase_seconds)
    assert phases["weights"] > 0 and phases["kv_cache"] > 0, phases
    assert "compile" in phases and phases["engine_start"] > 0, phases


async def test_greedy_equals_reference_engine(mesh: Mesh) -> None:
    reference = await TransformersEngine.load(mesh.model_dir, MODEL, dtype="float32")
    try:
        cases: list[tuple[pb.GenerateRequest, GenerationRequest]] = []
        sampling = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
        for i, prompt in enumerate(PROMPTS):
            cases.append(
                (gen(f"g{i}", 24, prompt=prompt), GenerationRequest(f"g{i}", sampling, prompt))
            )
        chat = pb.ChatPrompt(messages=[pb.PromptMessage(role="user", content="Tell me a story")])
        cases.append(
            (
                gen("gc", 24, chat=chat),
                GenerationRequest(
                    "gc", sampling, messages=(ChatMessage("user", "Tell me a story"),)
                ),
            )
        )
        for grpc_request, domain_request in cases:
            got = [r async for r in mesh.worker.Generate(grpc_request)]
            want = [c async for c in reference.generate(domain_request)]
            got_ids = [t for r in got for t in r.token_ids]
            want_ids = [t for c in want for t in c.token_ids]
            assert got_ids == want_ids, grpc_request
            assert len(set(got_ids)) > 1
            # Same text, except for a generation cut (by max_tokens) in the middle of a
            # UTF-8 character: the reference engine flushes it as U+FFFD, vLLM drops it.
            got_text = "".join(r.text for r in got).rstrip("\ufffd")
            assert got_text == "".join(c.text for c in want).rstrip("\ufffd")
            assert got[-1].finish_reason == pb.FINISH_REASON_LENGTH
            assert got[-1].completion_tokens == 24
            assert got[-1].prompt_tokens == want[-1].prompt_tokens
    finally:
        await reference.shutdown()


async def test_stop_string_and_eos(mesh: Mesh) -> None:
    full = [r async for r in mesh.worker.Generate(gen("s0", 30, prompt=PROMPTS[0]))]
    text = "".join(r.text for r in full)
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    request = gen("s1", 30, prompt=PROMPTS[0])
    request.sampling.stop.append(stop)
    cut = [r async for r in mesh.worker.Generate(request)]
    assert cut[-1].finish_reason == pb.FINISH_REASON_STOP
    assert "".join(r.text for r in cut) == text[: text.index(stop)]


async def test_seeded_sampling_is_reproducible(mesh: Mesh) -> None:
    def sampled(request_id: str, seed: int) -> pb.GenerateRequest:
        request = gen(request_id, 16, prompt=PROMPTS[1])
        request.sampling.temperature = 1.0
        request.sampling.top_k = 50
        request.sampling.seed = seed
        return request

    a = [t async for r in mesh.worker.Generate(sampled("x1", 7)) for t in r.token_ids]
    b = [t async for r in mesh.worker.Generate(sampled("x2", 7)) for t in r.token_ids]
    c = [t async for r in mesh.worker.Generate(sampled("x3", 8)) for t in r.token_ids]
    assert a == b
    assert a != c


async def heartbeat_model(mesh: Mesh) -> pb.LoadedModel:
    beat = await mesh.worker.Heartbeat(pb.HeartbeatRequest())
    (model,) = [m for m in beat.models if m.model == MODEL]
    return model


async def test_streaming_abort_and_stats(mesh: Mesh) -> None:
    before = await heartbeat_model(mesh)
    assert before.engine == "vllm"

    def start_long(
        request_id: str,
    ) -> tuple[grpc.aio.UnaryStreamCall, asyncio.Task[int], asyncio.Event]:
        call = mesh.worker.Generate(gen(request_id, LONG_TOKENS, prompt=PROMPTS[2]))
        first = asyncio.Event()

        async def read_stream() -> int:
            seen = 0
            async for response in call:
                seen += 1
                first.set()
                assert response.finish_reason == pb.FINISH_REASON_UNSPECIFIED
            return seen

        return call, asyncio.create_task(read_stream()), first

    async def settled(aborted_at_least: int) -> pb.LoadedModel:
        deadline = time.monotonic() + 30
        while True:
            model = await heartbeat_model(mesh)
            if model.aborted_requests_total >= aborted_at_least and model.running_requests == 0:
                return model
            assert time.monotonic() < deadline, model
            await asyncio.sleep(0.2)

    # 1. The client goes away right after its first token: the worker must abort the
    #    request in vLLM, long before its LONG_TOKENS tokens.
    call, reader, first = start_long("long")
    await asyncio.wait_for(first.wait(), 120)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    after = await settled(before.aborted_requests_total + 1)
    # Stopped before its end (how far it got depends on how fast a loaded machine
    # delivers the first token and the cancellation).
    assert after.generated_tokens_total - before.generated_tokens_total < LONG_TOKENS

    # 2. While requests run, heartbeats show them and the KV cache they hold (vLLM's
    #    scheduler stats reach the heartbeat). Three long streams keep the engine busy
    #    for longer than the heartbeats need, on a loaded machine too.
    streams = [start_long(f"long-{i}") for i in range(3)]
    seen_running = seen_kv = False
    model: pb.LoadedModel | None = None
    deadline = time.monotonic() + 120
    while not (seen_running and seen_kv):
        if all(reader.done() for _, reader, _ in streams):
            for _, reader, _ in streams:
                reader.result()  # raises a stream's own error, if one failed
            pytest.fail(f"the streams ended first; the last heartbeat said: {model}")
        assert time.monotonic() < deadline, model
        model = await heartbeat_model(mesh)
        seen_running = seen_running or model.running_requests >= 1
        seen_kv = seen_kv or 0 < model.kv_cache_usage <= 1
        await asyncio.sleep(0.05)
    for call, reader, _ in streams:
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    await settled(after.aborted_requests_total + 1)
    # Prefix caching: the same long prompt twice hits vLLM's prefix cache.
    long_prompt = "Everyone, everywhere, needs water, food, shelter and hope. " * 12
    for i in range(2):
        _ = [r async for r in mesh.worker.Generate(gen(f"p{i}", 2, prompt=long_prompt))]
    deadline = time.monotonic() + 10
    while (await heartbeat_model(mesh)).prefix_cache_hit_rate <= 0:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)


async def engine_metrics(mesh: Mesh) -> dict[str, float]:
    """The worker process's helios_worker_* samples of MODEL from its /metrics."""
    url = f"http://127.0.0.1:{mesh.worker_process.metrics_port}/metrics"
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
        if s.name.startswith("helios_worker_") and s.labels.get("model") == MODEL
    }


async def test_engine_metrics_come_from_vllm_stats(mesh: Mesh) -> None:
    # vLLM's scheduler stats as the worker's vllm-named metrics: a prompt sent twice
    # hits the prefix cache the second time (queries and hits count prompt tokens).
    prompt = "Metrics are read from the engine, not counted per call. " * 12
    for i in range(2):
        _ = [r async for r in mesh.worker.Generate(gen(f"metrics-{i}", 2, prompt=prompt))]
    deadline = time.monotonic() + 30
    while True:
        found = await engine_metrics(mesh)
        if found.get("helios_worker_prefix_cache_hits_total", 0) > 0:
            break
        assert time.monotonic() < deadline, found
        await asyncio.sleep(0.3)
    hits = found["helios_worker_prefix_cache_hits_total"]
    assert found["helios_worker_prefix_cache_queries_total"] >= hits
    assert found["helios_worker_num_requests_running"] >= 0
    assert found["helios_worker_num_requests_waiting"] >= 0
    assert 0 <= found["helios_worker_kv_cache_usage_perc"] <= 1
    assert found["helios_worker_num_preemptions_total"] >= 0


async def test_concurrent_requests_are_batched_and_correct(mesh: Mesh) -> None:
    single = [
        t
        async for r in mesh.worker.Generate(gen("c-ref", 16, prompt=PROMPTS[0]))
        for t in r.token_ids
    ]

    async def one(i: int) -> list[int]:
        request = gen(f"c{i}", 16, prompt=PROMPTS[0])
        return [t async for r in mesh.worker.Generate(request) for t in r.token_ids]

    results = await asyncio.gather(*(one(i) for i in range(8)))
    assert all(r == single for r in results)


async def test_prefill_is_refused_with_the_reason(mesh: Mesh) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mesh.worker.Prefill(pb.PrefillRequest(request=gen("pd", 8, prompt="hi")))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "KV connector" in (info.value.details() or "")


async def test_too_long_prompt_is_invalid_argument(mesh: Mesh) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        _ = [r async for r in mesh.worker.Generate(gen("big", MAX_LEN - 8, prompt="word " * 100))]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_degenerate_sampling_is_greedy_and_the_worker_stays_healthy(mesh: Mesh) -> None:
    greedy = [
        t async for r in mesh.worker.Generate(gen("g0", 8, prompt=PROMPTS[0])) for t in r.token_ids
    ]
    for index, temperature in enumerate((1e-45, 1e-30, 1e-6)):
        request = gen(f"g{index + 1}", 8, prompt=PROMPTS[0])
        request.sampling.temperature = temperature
        request.sampling.seed = -1
        got = [t async for r in mesh.worker.Generate(request) for t in r.token_ids]
        assert got == greedy
    request = gen("neg-seed", 8, prompt=PROMPTS[0])
    request.sampling.temperature, request.sampling.top_p = 1.0, 1e-9
    request.sampling.seed = -(2**63)
    assert [t async for r in mesh.worker.Generate(request) for t in r.token_ids] == greedy
    request = gen("nan", 8, prompt=PROMPTS[0])
    request.sampling.temperature = float("nan")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        _ = [r async for r in mesh.worker.Generate(request)]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    beat = await mesh.worker.Heartbeat(pb.HeartbeatRequest())
    assert beat.state != pb.WORKER_STATE_DEGRADED


async def test_through_the_proxy(mesh: Mesh) -> None:
    direct = [r async for r in mesh.worker.Generate(gen("d", 12, prompt=PROMPTS[1]))]
    want = "".join(r.text for r in direct)
    params = inference_pb2.CompletionParams(
        model=MODEL,
        prompt=struct_pb2.Value(string_value=PROMPTS[1]),
        max_tokens=12,
        temperature=0.0,
        ignore_eos=True,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            response = await mesh.proxy.CreateCompletion(
                inference_pb2.CreateCompletionRequest(params=params)
            )
            break
        except grpc.aio.AioRpcError as exc:
            # The proxy learns of the model from the worker's heartbeat.
            if time.monotonic() > deadline or exc.code() not in (
                grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.UNAVAILABLE,
            ):
                raise
            await asyncio.sleep(0.5)
    assert response.choices[0].text == want
    assert response.usage.completion_tokens == 12


# ------------------------------------------- P/D through vLLM's shared-storage KV connector

# Long enough for whole KV blocks (128 tokens on the CPU build): only whole blocks move.
LONG_PROMPT = " ".join(f"step {i} of the long walk goes on;" for i in range(40))


@dataclass
class PdPair:
    prefill: VllmEngine
    decode: VllmEngine
    shared: Path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pd_pair(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PdPair]:
    shared = tmp_path_factory.mktemp("vllm-kv-shared")

    def config(role: str, prefix_caching: bool) -> VllmConfig:
        return VllmConfig(
            dtype="float32",
            cpu_kvcache_space_gib=1,
            max_num_seqs=4,
            enable_prefix_caching=prefix_caching,
            kv_role=role,
            kv_shared_path=shared,
        )

    prefill = await VllmEngine.load(mesh.model_dir, MODEL, config("prefill", True))
    decode: VllmEngine | None = None
    try:
        # No local prefix cache on the decode side: every request must ask the connector.
        decode = await VllmEngine.load(mesh.model_dir, MODEL, config("decode", False))
        yield PdPair(prefill, decode, shared)
    finally:
        if decode is not None:
            await decode.shutdown()
        await prefill.shutdown()


def _saved_layers(shared: Path) -> set[Path]:
    return set(shared.rglob("*.safetensors"))


async def _prefill_then_decode(pair: PdPair, request_id: str, max_tokens: int) -> list[int]:
    request = GenerationRequest(
        request_id,
        SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True),
        prompt=LONG_PROMPT,
    )
    result = await pair.prefill.prefill(request)
    assert result.kv_handle is not None and result.first.finish_reason is None
    assert len(result.first.token_ids) == 1 and result.first.completion_tokens == 1
    assert await pair.prefill.export_kv(result.kv_handle) == []  # it moves through `shared`
    tokens = list(result.first.token_ids)
    last = None
    async for chunk in pair.decode.decode(request, tokens[0], []):
        tokens += chunk.token_ids
        last = chunk
    assert last is not None and last.finish_reason is FinishReason.LENGTH
    assert last.completion_tokens == max_tokens == len(tokens)
    return tokens


async def test_kv_connector_decode_equals_combined(pd_pair: PdPair) -> None:
    assert (
        pd_pair.prefill.count_tokens(
            GenerationRequest("n", SamplingParams(max_tokens=1), prompt=LONG_PROMPT)
        )
        > 128
    )
    combined = [
        t
        async for c in pd_pair.prefill.generate(
            GenerationRequest(
                "pd-combined",
                SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True),
                prompt=LONG_PROMPT,
            )
        )
        for t in c.token_ids
    ]
    before = _saved_layers(pd_pair.shared)
    split = await _prefill_then_decode(pd_pair, "pd-1", 16)
    assert split == combined
    # The prompt's KV cache is on the shared path (one file per attention layer).
    assert len(_saved_layers(pd_pair.shared)) >= 2 and _saved_layers(pd_pair.shared) >= before

    # The decode engine really uses the saved cache: replace it with noise and the greedy
    # continuation changes (a decode that recomputed the prompt would not notice).
    import torch
    from safetensors.torch import load_file, save_file

    for path in _saved_layers(pd_pair.shared):
        kv = load_file(path)["kv_cache"]
        save_file({"kv_cache": torch.randn_like(kv) * 10}, path)
    first = split[0]
    request = GenerationRequest(
        "pd-noise",
        SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True),
        prompt=LONG_PROMPT,
    )
    noisy = [first] + [
        t async for c in pd_pair.decode.decode(request, first, []) for t in c.token_ids
    ]
    assert noisy != combined


async def test_kv_connector_roles_are_enforced(pd_pair: PdPair, mesh: Mesh) -> None:
    assert pd_pair.decode.supports_disaggregation and pd_pair.decode.kv_via_connector
    request = GenerationRequest("r", SamplingParams(max_tokens=4), prompt="hi")
    with pytest.raises(FailedPreconditionError, match="kv_role 'decode'"):
        await pd_pair.decode.prefill(request)
    with pytest.raises(FailedPreconditionError, match="kv_role 'prefill'"):
        _ = [c async for c in pd_pair.prefill.decode(request, 1, [])]
    with pytest.raises(InvalidArgumentError, match="first_token_id"):
        _ = [c async for c in pd_pair.decode.decode(request, 10**6, [])]
    with pytest.raises(InvalidArgumentError, match="together"):
        VllmConfig(kv_role="prefill")
    with pytest.raises(InvalidArgumentError, match="kv_role must be"):
        VllmConfig(kv_role="sideways", kv_shared_path=Path("/tmp/x"))


async def test_prefill_and_decode_workers_over_grpc_with_the_connector(
    pd_pair: PdPair, mesh: Mesh
) -> None:
    """Two workers (prefill and decode roles) around the connector engines: Prefill on
    one, Decode on the other over real gRPC, nothing fetched between them (the KV cache
    moves through the shared path), the same greedy tokens as a combined generation."""
    from worker.engine.base import EngineClient
    from worker.models import ModelManager
    from worker.servicer import WorkerServicer

    prompt = " ".join(f"lap {i} around the quiet lake;" for i in range(45))
    servers = []
    stubs = {}
    try:
        for role, engine in (("prefill", pd_pair.prefill), ("decode", pd_pair.decode)):

            async def factory(name: str, path: Path, engine: EngineClient = engine) -> EngineClient:
                return engine

            models = ModelManager(factory, engine_kind="vllm", capacity_bytes=1 << 40)
            async for _ in models.load(MODEL, mesh.model_dir):
                continue
            servicer = WorkerServicer(
                models, worker_id=role, role=role, advertise_address="unused:1"
            )

            running = await serve_worker(servicer)
            servers.append(running)
            channel = grpc.aio.insecure_channel(running.address)
            stubs[role] = worker_pb2_grpc.WorkerServiceStub(channel)

        sampling = pb.SamplingParams(max_tokens=12, temperature=0.0, top_p=1.0, ignore_eos=True)
        request = pb.GenerateRequest(
            request_id="grpc-pd", model=MODEL, prompt=prompt, sampling=sampling
        )
        prefilled = await stubs["prefill"].Prefill(pb.PrefillRequest(request=request))
        assert prefilled.kv_cache_handle and len(prefilled.first.token_ids) == 1
        decoded = [
            r.step
            async for r in stubs["decode"].Decode(
                pb.DecodeRequest(
                    request=request,
                    kv_cache_handle=prefilled.kv_cache_handle,
                    # Nothing may be fetched from it: an unreachable address proves it.
                    prefill_worker=prefilled.prefill_worker,
                    first_token_id=prefilled.first.token_ids[0],
                )
            )
        ]
        split = list(prefilled.first.token_ids) + [t for step in decoded for t in step.token_ids]
        combined = [
            t
            async for c in pd_pair.prefill.generate(
                GenerationRequest(
                    "grpc-combined",
                    SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True),
                    prompt=prompt,
                )
            )
            for t in c.token_ids
        ]
        assert split == combined
        assert decoded[-1].finish_reason == pb.FINISH_REASON_LENGTH
    finally:
        for running in servers:
            await running.stop(0)


async def test_engine_limits_are_sized_from_the_estimate(
    mesh: Mesh, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker with --estimator and no engine limits: its capacity leaves room for a
    4096-token KV cache, far less than the model's 32k context. Unsized, vLLM would
    refuse to start (one full-context sequence must fit); sized, it starts, serves
    4096-token sequences and refuses longer ones, and the worker charges the whole
    planned memory (weights, KV cache, overhead) against its capacity."""
    base = tmp_path_factory.mktemp("vllm-sized")
    estimator = ServiceProcess(name="estimator", module="estimator.server", args=[], state_dir=base)
    worker: ServiceProcess | None = None
    try:
        await estimator.start()
        await estimator.wait_ready(60)
        client = EstimatorClient(estimator.address)
        memory = await client.model_memory(mesh.model_dir, "float32")
        await client.close()
        assert memory.context_tokens == MAX_LEN
        fixed = memory.weights_bytes + memory.activation_bytes + memory.overhead_bytes
        # 4096 tokens and the block vLLM keeps aside.
        capacity = fixed + (4096 + KV_BLOCK_TOKENS) * memory.kv_bytes_per_token
        worker = vllm_worker(
            "worker-vllm-sized",
            base,
            mesh.model_dir,
            "--estimator",
            estimator.address,
            "--memory-capacity-bytes",
            str(capacity),
        )
        # vLLM's own KV variable (an in-process engine of this module set it) would
        # override the sizing; the worker inherits this environment.
        monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
        await worker.start()
        await worker.wait_ready(START_LIMIT_S)
        async with grpc.aio.insecure_channel(worker.address) as channel:
            stub = worker_pb2_grpc.WorkerServiceStub(channel)
            beat = await stub.Heartbeat(pb.HeartbeatRequest(), timeout=30)
            assert beat.memory_total_bytes == capacity
            assert beat.memory_free_bytes == 0  # the plan took all of it
            fits = [r async for r in stub.Generate(gen("sized-ok", 8, prompt="hello"), timeout=120)]
            assert sum(len(r.token_ids) for r in fits) == 8
            with pytest.raises(grpc.aio.AioRpcError) as info:
                _ = [
                    r
                    async for r in stub.Generate(
                        gen("sized-long", 4100, prompt="hello"), timeout=120
                    )
                ]
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "4096" in (info.value.details() or "")
        log = worker.log_file.read_text(errors="replace")
        assert "engine limits from the memory estimate" in log
    finally:
        if worker is not None:
            await worker.stop(30)
        await estimator.stop(10)
