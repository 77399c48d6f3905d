"""Registry domain: ids, blobs, metadata, directory imports, GC, verified reads, usage."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from pathlib import Path

import pytest
from registry_testlib import CHUNK, write_model

from registry.blobs import LocalBlobStore, hash_file
from registry.core import Registry
from registry.import_progress import ImportProgress
from registry.metadata import MIGRATIONS, MetadataStore
from registry.usage import UsageTracker
from runtime.errors import DataLossError, InvalidArgumentError, NotFoundError
from runtime.model_ids import (
    canonical_model_id,
    check_alias,
    check_file_path,
    check_hub_revision,
    check_sha256,
    check_version_id,
    is_sha256,
    is_version_id,
    is_version_prefix,
    parse_reference,
)


def open_registry(data_dir: Path) -> Registry:
    return Registry.open(data_dir, chunk_size=CHUNK)


async def run_import(registry: Registry, source: Path, model_id: str) -> list[ImportProgress]:
    return [p async for p in registry.import_source(str(source), model_id)]


# ids -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Org/Name", "org/name"),
        ("models/Qwen/Qwen2-0.5B", "qwen/qwen2-0.5b"),
        ("hf://a/b_c.d", "a/b_c.d"),
    ],
)
def test_registry_canonical_ids(text: str, expected: str) -> None:
    assert canonical_model_id(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "name",
        "a/b/c",
        "../etc",
        "a/..",
        "/abs/x",
        "a/b\0",
        " a/b",
        "a/b c",
        "a/-b",
        "a/b--c",
        "a/",
    ],
)
def test_registry_invalid_ids_rejected(text: str) -> None:
    with pytest.raises(InvalidArgumentError):
        canonical_model_id(text)


def test_registry_references() -> None:
    assert parse_reference("Org/Name") == parse_reference("org/name@latest")
    assert parse_reference("org/name@ABCDEF1").revision == "abcdef1"
    with pytest.raises(InvalidArgumentError):
        parse_reference("org/name@")
    with pytest.raises(InvalidArgumentError):
        parse_reference("org/name@../x")


_SHA = "0123456789abcdef" * 4
_VERSION = _SHA[:40]


def test_registry_digests_and_version_ids() -> None:
    assert is_sha256(_SHA) and check_sha256(_SHA) == _SHA
    assert is_version_id(_VERSION) and check_version_id(_VERSION) == _VERSION
    assert is_version_prefix(_VERSION[:7]) and is_version_prefix(_VERSION)
    assert check_alias("Prod") == "prod" and check_hub_revision("refs/pr/1") == "refs/pr/1"
    assert parse_reference(f"org/name@{_VERSION}").revision == _VERSION
    for wrong in (_SHA.upper(), _SHA[:-1], _SHA + "0", _VERSION):
        assert not is_sha256(wrong)
    assert not is_version_id(_SHA) and not is_version_prefix(_VERSION[:6])


@pytest.mark.parametrize("suffix", ["\n", " ", "\r\n"])
def test_registry_ids_with_a_trailing_newline_are_refused(suffix: str) -> None:
    # ``^...$`` with re.match took "<id>\n": ``$`` also matches before a final newline.
    assert not is_sha256(_SHA + suffix)
    assert not is_version_id(_VERSION + suffix)
    assert not is_version_prefix(_VERSION[:7] + suffix)
    for check, text in (
        (check_sha256, _SHA),
        (check_version_id, _VERSION),
        (check_alias, "prod"),
        (check_hub_revision, "main"),
        (parse_reference, "org/name@prod"),
        (parse_reference, f"org/name@{_VERSION}"),
    ):
        with pytest.raises(InvalidArgumentError):
            check(text + suffix)


@pytest.mark.parametrize(
    "path", ["../x", "a/../../b", "/etc/passwd", "a\\b", "a/\0b", "C:/x", "a//b", "./a", ""]
)
def test_registry_invalid_file_paths_rejected(path: str) -> None:
    with pytest.raises(InvalidArgumentError):
        check_file_path(path)


# blobs -----------------------------------------------------------------------------


def test_registry_hash_file_chunks(tmp_path: Path) -> None:
    data = bytes(range(256)) * 10  # 2560 bytes: chunks of 1024, 1024, 512
    path = tmp_path / "f"
    path.write_bytes(data)
    digest = hash_file(path, chunk_size=1024)
    assert digest.sha256 == hashlib.sha256(data).hexdigest()
    assert digest.chunk_sha256 == tuple(
        hashlib.sha256(data[i : i + 1024]).hexdigest() for i in (0, 1024, 2048)
    )


def test_registry_local_store_verifies_on_write(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    src = tmp_path / "f"
    src.write_bytes(b"hello")
    good = hashlib.sha256(b"hello").hexdigest()
    with pytest.raises(DataLossError):
        store.put_file(hashlib.sha256(b"other").hexdigest(), src)
    assert not store.exists(hashlib.sha256(b"other").hexdigest())
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []
    assert store.put_file(good, src) is True
    assert store.put_file(good, src) is False  # dedup
    assert b"".join(store.read(good, 1, 3)) == b"ell"


# metadata --------------------------------------------------------------------------


def test_registry_schema_migrations_and_wal(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "r.db")
    assert store.schema_version() == len(MIGRATIONS)
    store.close()
    store = MetadataStore(tmp_path / "r.db")  # re-open: nothing re-applied
    assert store.schema_version() == len(MIGRATIONS)
    store.close()
    db = sqlite3.connect(tmp_path / "r.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert [r[0] for r in db.execute("SELECT version FROM schema_version")] == list(
        range(1, len(MIGRATIONS) + 1)
    )


# imports ---------------------------------------------------------------------------


async def test_registry_import_directory_manifest_and_restart(
    tmp_path: Path, model_dir: Path
) -> None:
    registry = open_registry(tmp_path / "data")
    progress = await run_import(registry, model_dir, "Org/Tiny")
    final = progress[-1]
    assert final.version is not None and final.version[0] == "org/tiny"
    total = sum(len(p.read_bytes()) for p in (model_dir / "sub").parent.glob("**/*.*"))
    assert final.bytes_done == final.bytes_total == total
    assert {p.file for p in progress if p.file} == {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "sub/notes.txt",
    }
    dones = [p.bytes_done for p in progress]
    assert dones == sorted(dones)
    manifest = await registry.manifest("org/tiny", "")
    weights = next(f for f in manifest.files if f.path == "model.safetensors")
    data = (model_dir / "model.safetensors").read_bytes()
    assert weights.sha256 == hashlib.sha256(data).hexdigest()
    assert len(weights.chunk_sha256) == 5 and weights.chunk_size == CHUNK
    registry.close()

    reopened = open_registry(tmp_path / "data")  # survives a restart
    row = await reopened.resolve("ORG/tiny")
    assert row.version == final.version[1]
    assert (await reopened.resolve(f"org/tiny@{row.version[:8]}")).version == row.version
    assert (
        reopened.config_cached("org/tiny", row.version) == (model_dir / "config.json").read_text()
    )
    reopened.close()


async def test_registry_second_version_dedups_unchanged_files(
    tmp_path: Path, model_dir: Path
) -> None:
    registry = open_registry(tmp_path / "data")
    await run_import(registry, model_dir, "org/tiny")
    stored_before = registry.meta.blob_bytes()
    (model_dir / "tokenizer.json").write_bytes(b'{"version": "2.0"}')
    progress = await run_import(registry, model_dir, "org/tiny")
    added = registry.meta.blob_bytes() - stored_before
    assert added == len(b'{"version": "2.0"}')
    assert progress[-1].reused_bytes == progress[-1].bytes_total - added
    rows = registry.meta.versions("org/tiny")
    assert len(rows) == 2
    assert (await registry.resolve("org/tiny")).version == progress[-1].version[1]  # type: ignore[index]
    registry.close()


async def test_registry_crash_mid_import_then_resume(tmp_path: Path, model_dir: Path) -> None:
    registry = open_registry(tmp_path / "data")
    seen: list[str] = []

    def crash(path: str) -> None:
        seen.append(path)
        if path == "sub/notes.txt":  # after config, weights were stored
            raise RuntimeError("simulated crash")

    registry.fault_hook = crash
    with pytest.raises(RuntimeError):
        await run_import(registry, model_dir, "org/tiny")
    assert registry.meta.versions() == []  # nothing half-done is visible
    with pytest.raises(NotFoundError):
        await registry.resolve("org/tiny")
    stored = registry.meta.blob_bytes()
    assert stored >= (model_dir / "model.safetensors").stat().st_size
    registry.close()

    resumed = open_registry(tmp_path / "data")  # "restart"
    progress = await run_import(resumed, model_dir, "org/tiny")
    assert progress[-1].version is not None
    assert progress[-1].reused_bytes == stored  # the stored blobs were not written again
    resumed.close()


async def test_registry_concurrent_imports_same_model(tmp_path: Path, model_dir: Path) -> None:
    first = open_registry(tmp_path / "data")
    second = open_registry(tmp_path / "data")  # a second process on the same data dir
    results = await asyncio.gather(
        run_import(first, model_dir, "org/tiny"),
        run_import(second, model_dir, "org/tiny"),
        run_import(first, model_dir, "org/tiny"),
    )
    versions = {r[-1].version for r in results}
    assert len(versions) == 1
    rows = first.meta.versions()
    assert len(rows) == 1
    files = first.meta.files("org/tiny", rows[0].version)
    assert len(files) == 4
    blob_files = [p for p in (tmp_path / "data" / "blobs" / "sha256").rglob("*") if p.is_file()]
    assert len(blob_files) == 4
    first.close()
    second.close()


async def test_registry_symlink_outside_rejected(tmp_path: Path, model_dir: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("x")
    (model_dir / "leak").symlink_to(secret)
    registry = open_registry(tmp_path / "data")
    with pytest.raises(InvalidArgumentError, match="outside"):
        await run_import(registry, model_dir, "org/tiny")
    assert registry.meta.versions() == []


async def test_registry_delete_frees_only_unreferenced(tmp_path: Path, model_dir: Path) -> None:
    registry = open_registry(tmp_path / "data")
    v1 = (await run_import(registry, model_dir, "org/tiny"))[-1].version
    await run_import(registry, model_dir, "org/copy")  # same bytes, another model
    (model_dir / "tokenizer.json").write_bytes(b"{}")
    v2 = (await run_import(registry, model_dir, "org/tiny"))[-1].version
    assert v1 and v2 and v1 != v2
    freed = await registry.delete_version("org/tiny", v1[1])
    assert freed == 0  # org/copy still uses every v1 blob
    freed = await registry.delete_version("org/copy", v1[1])
    assert freed == len(b'{"version": "1.0"}x')
    with pytest.raises(NotFoundError):
        await registry.delete_version("org/copy", v1[1])
    manifest = await registry.manifest("org/tiny", "latest")
    for entry in manifest.files:  # v2 is intact
        data = b"".join([p async for _, _, p in registry.read_blob(entry.sha256)])
        assert hashlib.sha256(data).hexdigest() == entry.sha256


async def test_registry_read_blob_ranges_verified(tmp_path: Path) -> None:
    weights = bytes(range(256)) * 20
    src = write_model(tmp_path / "src", weights=weights)
    registry = open_registry(tmp_path / "data")
    await run_import(registry, src, "org/tiny")
    sha = hashlib.sha256(weights).hexdigest()
    for offset, length in [(0, 0), (1000, 100), (1023, 2), (5000, 0), (len(weights), 0)]:
        pieces = [p async for p in registry.read_blob(sha, offset, length)]
        data = b"".join(p for _, _, p in pieces)
        end = len(weights) if length == 0 else offset + length
        assert data == weights[offset:end]
    with pytest.raises(InvalidArgumentError):
        _ = [p async for p in registry.read_blob(sha, len(weights) + 1)]
    with pytest.raises(NotFoundError):
        _ = [p async for p in registry.read_blob("0" * 64)]
    # Corrupt the stored copy: the damaged chunk is refused, others still read.
    blob_path = registry.blobs.path(sha)  # type: ignore[attr-defined]
    raw = bytearray(blob_path.read_bytes())
    raw[3000] ^= 0xFF
    blob_path.write_bytes(bytes(raw))
    with pytest.raises(DataLossError):
        _ = [p async for p in registry.read_blob(sha, 2900, 200)]
    ok = b"".join([p async for _, _, p in registry.read_blob(sha, 0, 1024)])
    assert ok == weights[:1024]


async def test_registry_bad_config_json_rejected(tmp_path: Path, model_dir: Path) -> None:
    (model_dir / "config.json").write_text("{not json")
    registry = open_registry(tmp_path / "data")
    with pytest.raises(InvalidArgumentError, match=r"config\.json"):
        await run_import(registry, model_dir, "org/tiny")
    assert registry.meta.versions() == []


# usage -----------------------------------------------------------------------------


def test_registry_predictor_follows_rate_and_season() -> None:
    now = [0.0]
    tracker = UsageTracker(lambda: now[0])
    # A model busy every day at 09:00 UTC, and one with steady light use.
    for day in range(7):
        for minute in range(0, 60, 10):
            tracker.record("org/morning", 20, 0, now=day * 86400 + 9 * 3600 + minute * 60)
    for hour in range(7 * 24):
        tracker.record("org/steady", 1, 0, now=hour * 3600.0)
    before_nine = 7 * 86400 + 8 * 3600 + 1800  # 08:30: the next hour is 09:xx
    afternoon = 7 * 86400 + 15 * 3600
    assert tracker.forecast("org/morning", before_nine) > tracker.forecast("org/morning", afternoon)
    # Seasonality lifts the morning model's forecast above its plain decayed rate.
    u = tracker.models["org/morning"]
    import math

    plain = u.rate * math.exp(-(before_nine - u.updated) / 3600)
    assert tracker.forecast("org/morning", before_nine) > plain
    assert tracker.predictions(1, now=7 * 86400 + 0.0)[0].model_id == "org/steady"


def test_registry_eviction_order_size_priority_pins() -> None:
    now = [100_000.0]  # 27 h later
    tracker = UsageTracker(lambda: now[0])
    gib = 1024**3
    tracker.record("org/hot", 100, 0)
    tracker.record("org/old", 100, 0, now=0.0)  # hot long ago: aged out
    models = [("org/hot", gib), ("org/old", gib), ("org/big", 8 * gib), ("org/pinned", 9 * gib)]
    policies = {"org/pinned": (0, True)}
    order = [c.model_id for c in tracker.eviction_order(models, policies, 0)]
    assert order[0] == "org/big"  # idle and big first
    assert order.index("org/old") < order.index("org/hot")
    assert "org/pinned" not in order
    assert [c.model_id for c in tracker.eviction_order(models, policies, 8 * gib)] == ["org/big"]
    policies["org/big"] = (3, False)  # high priority class: kept longer
    assert tracker.eviction_order(models, policies, 1)[0].model_id == "org/old"
