"""ModelCache over real sources: the fake registry (real gRPC) and a real HTTP range server."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from storaged_fakes import BlobStore, FakeRegistry, RangeServer, sha, start_registry

from runtime.errors import (
    DataLossError,
    FailedPreconditionError,
    NotFoundError,
    ResourceExhaustedError,
)
from storaged.cache import ModelCache, Progress
from storaged.download import ChunkedDownloader
from storaged.remote import RegistryClient
from storaged.sources import HttpBlobSource
from storaged.tiers import Tier, TierConfig, parse_size, parse_tier_spec

KB = 1024


def blob(n: int, seed: int) -> bytes:
    return (bytes([seed % 251]) + os.urandom(15)) * (n // 16) + os.urandom(n % 16)


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "remote", chunk_size=64 * KB)


@pytest_asyncio.fixture
async def registry(store: BlobStore) -> AsyncIterator[tuple[RegistryClient, FakeRegistry]]:
    running, fake = await start_registry(store)
    client = RegistryClient(f"127.0.0.1:{running.port}")
    yield client, fake
    await client.close()
    await running.stop(0)


@pytest.fixture
def http(store: BlobStore) -> Iterator[RangeServer]:
    server = RangeServer(store.root)
    yield server
    server.close()


def tiers(tmp_path: Path, ram: int = 10 << 20, ssd: int = 100 << 20) -> list[TierConfig]:
    return [
        TierConfig(Tier.RAM, tmp_path / "ram", ram),
        TierConfig(Tier.SSD, tmp_path / "ssd", ssd),
    ]


async def ensure(cache: ModelCache, model: str, version: str = "") -> list[Progress]:
    return [p async for p in cache.ensure(model, version)]


def test_tier_specs() -> None:
    t = parse_tier_spec("ram=/dev/shm/helios:2GiB")
    assert (t.tier, t.path, t.capacity_bytes) == (Tier.RAM, Path("/dev/shm/helios"), 2 << 30)
    assert parse_size("500MB") == 500_000_000
    for bad in ("ram=/x", "tape=/x:1GiB", "ram=/x:lots", "ssd=/x:0"):
        with pytest.raises(ValueError):
            parse_tier_spec(bad)


async def test_ensure_from_registry_links_and_verifies(
    tmp_path: Path, store: BlobStore, registry: tuple[RegistryClient, FakeRegistry]
) -> None:
    client, _ = registry
    files = {"config.json": b'{"a": 1}', "model.safetensors": blob(300 * KB, 1), "sub/t.bin": b""}
    store.add_version("org/m", "v1", files)
    cache = ModelCache(tiers(tmp_path), client, ChunkedDownloader([client], connections=4))
    progress = await ensure(cache, "org/m")
    last = progress[-1]
    assert last.local_dir and last.tier is Tier.RAM
    assert last.bytes_done == last.bytes_total == sum(len(d) for d in files.values())
    dones = [p.bytes_done for p in progress]
    assert dones == sorted(dones)
    local = Path(last.local_dir)
    for path, data in files.items():
        assert (local / path).read_bytes() == data
        assert (local / path).stat().st_ino == (tmp_path / "ram/blobs" / sha(data)).stat().st_ino
    # Second time: all hits, nothing downloaded.
    before = cache.downloader.bytes_downloaded
    again = await ensure(cache, "org/m", "v1")
    assert again[-1].local_dir == last.local_dir
    assert cache.downloader.bytes_downloaded == before
    assert cache.hit_rate > 0


async def test_unknown_model_is_not_found(
    tmp_path: Path, registry: tuple[RegistryClient, FakeRegistry]
) -> None:
    client, _ = registry
    cache = ModelCache(tiers(tmp_path), client, ChunkedDownloader([client]))
    with pytest.raises(NotFoundError):
        await ensure(cache, "org/none")


async def test_two_versions_share_files_on_disk(
    tmp_path: Path, store: BlobStore, registry: tuple[RegistryClient, FakeRegistry]
) -> None:
    client, _ = registry
    shared = blob(200 * KB, 2)
    store.add_version("org/m", "v1", {"w.bin": shared, "c.json": b"1"})
    store.add_version("org/m", "v2", {"w.bin": shared, "c.json": b"2"})
    cache = ModelCache(tiers(tmp_path), client, ChunkedDownloader([client]))
    d1 = Path((await ensure(cache, "org/m", "v1"))[-1].local_dir)
    d2 = Path((await ensure(cache, "org/m", "v2"))[-1].local_dir)
    assert d1 != d2
    assert (d1 / "w.bin").stat().st_ino == (d2 / "w.bin").stat().st_ino
    assert cache.tiers[0].used == len(shared) + 2
    assert cache.downloader.bytes_downloaded == len(shared) + 2


async def test_concurrent_ensures_download_each_file_once(
    tmp_path: Path,
    store: BlobStore,
    registry: tuple[RegistryClient, FakeRegistry],
    http: RangeServer,
) -> None:
    client, _ = registry
    shared = blob(512 * KB, 3)
    store.add_version("org/m", "v1", {"w.bin": shared, "a": b"aaa"})
    store.add_version("org/m", "v2", {"w.bin": shared, "b": b"bbbb"})
    http.rate = 4 << 20  # slow enough that the calls overlap
    cache = ModelCache(
        tiers(tmp_path), client, ChunkedDownloader([HttpBlobSource(http.base_url)], connections=8)
    )
    results = await asyncio.gather(
        ensure(cache, "org/m", "v1"), ensure(cache, "org/m", "v1"), ensure(cache, "org/m", "v2")
    )
    assert all(r[-1].local_dir for r in results)
    assert http.bytes_sent == len(shared) + 3 + 4
    assert http.max_parallel > 1  # chunks really went over several connections


async def test_dropped_connections_and_corrupt_bytes_are_retried(
    tmp_path: Path,
    store: BlobStore,
    registry: tuple[RegistryClient, FakeRegistry],
    http: RangeServer,
) -> None:
    client, _ = registry
    data = blob(640 * KB, 4)
    store.add_version("org/m", "v1", {"w.bin": data})
    http.drop_next = 3
    http.corrupt_next = 2
    downloader = ChunkedDownloader([HttpBlobSource(http.base_url)], backoff_s=0.01)
    cache = ModelCache(tiers(tmp_path), client, downloader)
    local = Path((await ensure(cache, "org/m"))[-1].local_dir)
    assert (local / "w.bin").read_bytes() == data
    assert downloader.retries >= 5


async def test_manifest_mismatch_is_never_visible(
    tmp_path: Path,
    store: BlobStore,
    registry: tuple[RegistryClient, FakeRegistry],
    http: RangeServer,
) -> None:
    client, _ = registry
    data = blob(200 * KB, 5)
    store.add_version("org/m", "v1", {"w.bin": data})
    store.lie_about.add(sha(data))
    downloader = ChunkedDownloader([HttpBlobSource(http.base_url)], attempts=2, backoff_s=0.01)
    cache = ModelCache(tiers(tmp_path), client, downloader)
    with pytest.raises(DataLossError, match="manifest says"):
        await ensure(cache, "org/m")
    assert not (tmp_path / "ram/blobs" / sha(data)).exists()
    assert not any((tmp_path / "ram/versions").rglob("w.bin"))
    assert not cache.is_cached("org/m", "v1")


async def test_too_big_for_every_tier_is_resource_exhausted(
    tmp_path: Path, store: BlobStore, registry: tuple[RegistryClient, FakeRegistry]
) -> None:
    client, _ = registry
    store.add_version("org/big", "v1", {"w.bin": blob(300 * KB, 6)})
    cache = ModelCache(
        tiers(tmp_path, ram=100 * KB, ssd=200 * KB), client, ChunkedDownloader([client])
    )
    with pytest.raises(ResourceExhaustedError, match="fits in no tier"):
        await ensure(cache, "org/big")


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


async def test_real_disk_full_is_resource_exhausted(
    tmp_path: Path,
    tiny_tmpfs: Path,
    store: BlobStore,
    registry: tuple[RegistryClient, FakeRegistry],
) -> None:
    client, _ = registry
    data = blob(1024 * KB, 7)
    store.add_version("org/m", "v1", {"w.bin": data})
    # The tier claims 10 MiB but its filesystem holds 256 KiB: the real ENOSPC.
    cache = ModelCache(
        [TierConfig(Tier.RAM, tiny_tmpfs, 10 << 20)],
        client,
        ChunkedDownloader([client]),
        state_dir=tmp_path / "state",
    )
    with pytest.raises(ResourceExhaustedError, match="no space"):
        await ensure(cache, "org/m")
    assert not (tiny_tmpfs / "blobs" / sha(data)).exists()


async def test_admission_eviction_demotion_and_pins(
    tmp_path: Path, store: BlobStore, registry: tuple[RegistryClient, FakeRegistry]
) -> None:
    client, _ = registry
    a, b = blob(200 * KB, 8), blob(200 * KB, 9)
    store.add_version("org/a", "v1", {"w.bin": a})
    store.add_version("org/b", "v1", {"w.bin": b})
    cache = ModelCache(tiers(tmp_path, ram=300 * KB), client, ChunkedDownloader([client]))
    for _ in range(3):
        assert (await ensure(cache, "org/a"))[-1].tier is Tier.RAM
    # b is new (frequency 1 < a's 3): not admitted to RAM, goes to SSD.
    assert (await ensure(cache, "org/b"))[-1].tier is Tier.SSD
    for _ in range(3):
        last = (await ensure(cache, "org/b"))[-1]
    # Now b is the hotter one: it displaces a, which is demoted, not lost.
    assert last.tier is Tier.RAM
    ram, ssd = cache.tiers
    assert sha(a) not in ram.blobs and sha(a) in ssd.blobs
    assert ram.evictions >= 1 and ram.demotions >= 1
    assert (tmp_path / "ssd/blobs" / sha(a)).read_bytes() == a
    assert not cache.is_cached("org/a", "v1") or cache.stat("org/a")[0].tier is not Tier.RAM
    # A pinned model is never evicted, whatever the frequencies.
    cache.pin("org/b")
    for _ in range(6):
        assert (await ensure(cache, "org/a"))[-1].tier is Tier.SSD
    assert sha(b) in ram.blobs
    with pytest.raises(FailedPreconditionError, match="pinned"):
        await cache.evict("org/b")
    cache.unpin("org/b")
    freed = await cache.evict("org/b")
    assert freed >= len(b)
    assert sha(b) not in ram.blobs and sha(b) not in ssd.blobs


async def test_state_survives_restart(
    tmp_path: Path, store: BlobStore, registry: tuple[RegistryClient, FakeRegistry]
) -> None:
    client, _ = registry
    store.add_version("org/m", "v1", {"w.bin": blob(100 * KB, 10)})
    cache = ModelCache(tiers(tmp_path), client, ChunkedDownloader([client]))
    await ensure(cache, "org/m")
    cache.pin("org/m")
    reopened = ModelCache(tiers(tmp_path), client, ChunkedDownloader([client]))
    assert reopened.is_cached("org/m", "v1")
    assert "org/m" in reopened.pins
    await ensure(reopened, "org/m")
    assert reopened.downloader.bytes_downloaded == 0


async def test_registry_answers_that_break_its_contract_are_refused(
    tmp_path: Path, store: BlobStore, registry: tuple[RegistryClient, FakeRegistry]
) -> None:
    client, fake = registry
    data = blob(100 * KB, 11)
    cache = ModelCache(tiers(tmp_path), client, ChunkedDownloader([client], backoff_s=0.01))
    store.add_version("org/m", "v1", {"w.bin": data})
    fake.total_bytes_error = 1  # total_bytes disagrees with the files
    with pytest.raises(FailedPreconditionError, match="add up to"):
        await ensure(cache, "org/m")
    fake.total_bytes_error = 0
    fake.size_bytes_error = -1  # the blob is shorter than the manifest's range
    with pytest.raises(DataLossError, match="too short"):
        await ensure(cache, "org/m")
    assert not (tmp_path / "ram" / "blobs" / sha(data)).exists()
    fake.size_bytes_error = 0
    store.add_version("org/m", "../escape", {"w.bin": data})  # "latest" -> an unsafe id
    with pytest.raises(FailedPreconditionError, match="not a usable id"):
        await ensure(cache, "org/m")
    assert not (tmp_path / "ram" / "escape").exists()
    assert Path((await ensure(cache, "org/m", "v1"))[-1].local_dir).name == "v1"
