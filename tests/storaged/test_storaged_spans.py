"""EnsureModel's span says where the model was placed and whether it was a cache hit."""

from __future__ import annotations

from pathlib import Path

from helios.v1 import storage_pb2 as pb
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from storaged_fakes import BlobStore, FakeRegistry
from test_storaged_servicer import env, start_storaged  # noqa: F401  (env: a fixture)

from runtime import tracing
from storaged.remote import RegistryClient


async def test_ensure_model_span_has_tier_and_cache_hit(
    tmp_path: Path,
    env: tuple[BlobStore, FakeRegistry, RegistryClient],  # noqa: F811
) -> None:
    store, _, client = env
    exporter = InMemorySpanExporter()
    tracing.configure_tracing("storaged", None).add_span_processor(SimpleSpanProcessor(exporter))
    store.add_version("org/m", "v1", {"config.json": b"{}", "model.safetensors": b"w" * 1000})
    running, stub, channel, _ = await start_storaged(tmp_path / "node", client, [])
    try:
        for _ in range(2):
            [m async for m in stub.EnsureModel(pb.EnsureModelRequest(model_id="org/m"))]
    finally:
        await channel.close()
        await running.stop(0)
    ensures = [
        dict(s.attributes or {})
        for s in exporter.get_finished_spans()
        if s.kind == SpanKind.SERVER and s.name.endswith("/EnsureModel")
    ]
    assert [(a["helios.storage.tier"], a["helios.storage.cache_hit"]) for a in ensures] == [
        ("ram", False),
        ("ram", True),
    ]
    assert all(a["helios.model"] == "org/m" for a in ensures)
