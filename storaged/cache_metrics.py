"""Prometheus series of the model cache: hits, misses, evictions and demotions per tier,
bytes downloaded and the latest download rate, bytes held and capacity per tier."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

HITS = Counter("helios_storaged_file_hits_total", "Files found in a local tier", ["tier"])
MISSES = Counter("helios_storaged_file_misses_total", "Files fetched from peers or remote")
EVICTIONS = Counter("helios_storaged_evictions_total", "Files evicted from a tier", ["tier"])
DEMOTIONS = Counter("helios_storaged_demotions_total", "Files moved to a slower tier", ["tier"])
DOWNLOADED = Counter("helios_storaged_downloaded_bytes_total", "Bytes fetched")
USED = Gauge("helios_storaged_tier_used_bytes", "Bytes held per tier", ["tier"])
CAPACITY = Gauge("helios_storaged_tier_capacity_bytes", "Capacity per tier", ["tier"])
RATE = Gauge("helios_storaged_download_bytes_per_second", "Rate of the latest download")
