"""Soak (issue 16): `helios up --workers 2` under mixed traffic for N minutes with faults
injected; prints a table of what happened. Run by hand, never a test:

    .venv/bin/python bench/soak_bench.py [--minutes 30] [--lanes 3] [--fault-every 60]

The mesh is `helios up` as a process (as tests/support/mesh_harness.py starts it), with the tiny
model (models/tinymodel.py), its own HELIOS_HOME in a temporary directory, an inference key
(``--api-key k1:600``) and the admin key `helios up` writes to $HELIOS_HOME/admin-key. Every
request goes through Envoy on 127.0.0.1:

- lanes of good traffic (openai client, key k1): chat and completions, unary and streamed,
  small max_tokens; all k1 requests together are paced under the key's 600/min;
- a lane of bad requests (httpx): invalid sampling values, an unknown model, a body over the
  route's limit, malformed JSON, a wrong key, no key, the admin API without the admin key;
- a lane of admin calls (admin key): memory-stats, /v1/health, and now and then the model
  scaled to 0 and back to 1;
- faults: every ``--fault-every`` s, kill -9 of a random service among worker-0, worker-1,
  registry, storaged, estimator, proxy, envoy (pids from the ready file, which `helios up`
  rewrites when it restarts one); the bench waits for the new pid before the next kill;
- RSS of every process (psutil, pids from the ready file) every ``--sample-every`` s.

At the end: requests by kind, outcomes by HTTP status / error code, the outcomes not
expected (a 5xx other than 503, a 503 or a transport error outside the ~10 s after a kill,
a bad request not answered 4xx), the faults and how long each service took to come back,
restarts seen ("restarted" lines of `helios up`), RSS per process at start (after the
warm-up), max, end and drift, and latency p50/p99 per kind. `helios up` is stopped with
SIGINT and must exit 0. Every loop is bounded in count and in time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import openai
import psutil
from openai.types.chat import ChatCompletionMessageParam

from models.tinymodel import DEFAULT_MODEL_NAME, build_tiny_model

REPO = Path(__file__).resolve().parents[1]
UP_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 60.0
RESTART_WAIT_S = 60.0
FAULT_WINDOW_S = 10.0  # after a kill: 503s and transport errors are expected
SCALE_ZERO_HOLD_S = 10.0
API_KEY = "k1"
API_KEY_RPM = 600
PACE_PER_S = 8.0  # k1's requests, all lanes together (the key allows 10/s)
KILLABLE = ("worker-0", "worker-1", "registry", "storaged", "estimator", "proxy", "envoy")
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say something short."}]
OVERSIZED_BYTES = 9 * 1024 * 1024  # chat/completions' body limit is 8 MiB
# A bad request's expected answers (anything else is reported).
BAD_EXPECTED: dict[str, tuple[int, ...]] = {
    "bad_temperature": (400,),
    "bad_max_tokens": (400,),
    "tiny_temperature": (200, 400),  # issue 16 item 3: served or refused, never a 5xx
    "unknown_model": (404,),
    "oversized_body": (413,),
    "malformed_json": (400,),
    "wrong_key": (401,),
    "no_key": (401,),
    "admin_no_key": (401, 403),
}


# --- the mesh ----------------------------------------------------------------------------
@dataclass
class Up:
    """`helios up` as a process, read through its ready file (rewritten on each restart)."""

    process: subprocess.Popen[bytes]
    ready_file: Path
    output: Path
    _last: dict[str, Any] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        # Between a restart's rewrite and our read: the last one read.
        with contextlib.suppress(OSError, ValueError):
            self._last = dict(json.loads(self.ready_file.read_text()))
        return self._last

    def pids(self) -> dict[str, int]:
        info = self.info()
        pids = {name: int(s["pid"]) for name, s in info.get("services", {}).items() if s["pid"]}
        if info.get("envoy_pid"):
            pids["envoy"] = int(info["envoy_pid"])
        pids["helios-up"] = self.process.pid
        return pids

    def printed(self) -> str:
        return self.output.read_text(errors="replace")


def start_up(root: Path, model_dir: Path) -> Up:
    ready = root / "up.json"
    output = root / "up.out"
    env = {**os.environ, "HELIOS_HOME": str(root / "home"), "PYTHONUNBUFFERED": "1"}
    env.pop("HELIOS_ADMIN_KEY", None)
    env.pop("HELIOS_API_KEYS", None)
    command = [
        sys.executable,
        "-m",
        "cli.main",
        "up",
        "--port",
        "0",
        "--workers",
        "2",
        "--api-key",
        f"{API_KEY}:{API_KEY_RPM}",
        "--ready-file",
        str(ready),
        "--state-dir",
        str(root / "state"),
        "--model",
        f"{DEFAULT_MODEL_NAME}={model_dir}",
    ]
    with output.open("wb") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + UP_TIMEOUT_S
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait(timeout=30)
            raise SystemExit(f"helios up did not come up:\n{output.read_text(errors='replace')}")
        time.sleep(0.2)
    return Up(process, ready, output)


def stop_up(up: Up) -> int | None:
    """SIGINT (Ctrl-C); the exit code, None if it had to be killed."""
    if up.process.poll() is not None:
        return up.process.returncode
    up.process.send_signal(signal.SIGINT)
    try:
        return up.process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        up.process.kill()
        up.process.wait(timeout=30)
        return None


# --- what happened -----------------------------------------------------------------------
@dataclass
class Outcome:
    at: float
    kind: str
    outcome: str  # "200", "400 invalid_request_error", "transport APIConnectionError", ...
    status: int | None
    latency_s: float
    detail: str = ""


@dataclass
class Fault:
    at: float
    service: str
    old_pid: int
    back_after_s: float | None = None  # the ready file names a new pid
    served_after_s: float | None = None  # the first chat served after the kill


@dataclass
class Record:
    started: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    outcomes: list[Outcome] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    scale_windows: list[tuple[float, float]] = field(default_factory=list)
    rss: dict[str, list[tuple[float, int, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )  # name -> (t, pid, rss)

    def add(self, outcome: Outcome) -> None:
        with self.lock:
            self.outcomes.append(outcome)
            if outcome.kind in GOOD_KINDS and outcome.status == 200:
                for fault in self.faults:
                    if fault.served_after_s is None and outcome.at > fault.at:
                        fault.served_after_s = outcome.at - fault.at

    def context(self, at: float, until: float | None = None) -> str:
        """What was going on over [at, until]: a kill's window, a scale to 0, or nothing."""
        until = at if until is None else until
        with self.lock:
            for fault in reversed(self.faults):
                if fault.at <= until and at <= fault.at + FAULT_WINDOW_S:
                    return f"fault:{fault.service}"
            for begin, end in self.scale_windows:
                if begin <= until and at <= end:
                    return "scale"
        return ""

    def context_of(self, o: Outcome) -> str:
        return self.context(o.at, o.at + o.latency_s)


GOOD_KINDS = ("chat", "chat_stream", "completion", "completion_stream")


class Pacer:
    """At most ``per_s`` starts a second across threads (k1's rate limit)."""

    def __init__(self, per_s: float) -> None:
        self._interval = 1.0 / per_s
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self._interval
        time.sleep(max(0.0, slot - now))


def error_code(body: Any) -> str:
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return str(error.get("code") or error.get("type") or "?")
    return "non-openai-body"


# --- lanes -------------------------------------------------------------------------------
def good_lane(
    lane: int,
    rest_url: str,
    model: str,
    record: Record,
    pacer: Pacer,
    deadline: float,
    stop: threading.Event,
) -> None:
    client = openai.OpenAI(base_url=rest_url, api_key=API_KEY, max_retries=0, timeout=30)
    rng = random.Random(lane)
    for i in range(1_000_000):
        if stop.is_set() or time.monotonic() > deadline:
            return
        kind = GOOD_KINDS[(i + lane) % len(GOOD_KINDS)]
        pacer.wait()
        started = time.monotonic()
        status: int | None = 200
        detail = ""
        try:
            max_tokens = rng.randint(1, 12)
            if kind == "chat":
                reply = client.chat.completions.create(
                    model=model,
                    messages=MESSAGES,
                    max_tokens=max_tokens,
                )
                ok = bool(reply.choices)
            elif kind == "completion":
                done = client.completions.create(
                    model=model, prompt="Once upon a time", max_tokens=max_tokens
                )
                ok = bool(done.choices)
            elif kind == "chat_stream":
                chunks = client.chat.completions.create(
                    model=model,
                    messages=MESSAGES,
                    max_tokens=max_tokens,
                    stream=True,
                )
                finish = [c.choices[0].finish_reason for c in chunks if c.choices]
                ok = bool(finish) and finish[-1] is not None
            else:
                pieces = client.completions.create(
                    model=model, prompt="Once upon a time", max_tokens=max_tokens, stream=True
                )
                finish = [c.choices[0].finish_reason for c in pieces if c.choices]
                ok = bool(finish) and finish[-1] is not None
            outcome = "200" if ok else "200 incomplete"
        except openai.APIStatusError as error:
            status = error.status_code
            outcome = f"{status} {error_code(error.body and {'error': error.body})}"
            detail = str(error.message)[:160]
        except (openai.APIError, httpx.HTTPError) as error:
            status = None
            outcome = f"transport {type(error).__name__}"
            detail = str(error)[:160]
        record.add(Outcome(started, kind, outcome, status, time.monotonic() - started, detail))


def bad_request(http: httpx.Client, kind: str, model: str, admin_url: str) -> httpx.Response:
    key = {"Authorization": f"Bearer {API_KEY}"}
    chat = {"model": model, "messages": MESSAGES, "max_tokens": 2}
    if kind == "bad_temperature":
        return http.post("/chat/completions", json={**chat, "temperature": 5}, headers=key)
    if kind == "bad_max_tokens":
        return http.post("/chat/completions", json={**chat, "max_tokens": -3}, headers=key)
    if kind == "tiny_temperature":
        return http.post("/chat/completions", json={**chat, "temperature": 1e-45}, headers=key)
    if kind == "unknown_model":
        return http.post("/chat/completions", json={**chat, "model": "no-such-model"}, headers=key)
    if kind == "oversized_body":
        big = {**chat, "messages": [{"role": "user", "content": "x" * OVERSIZED_BYTES}]}
        return http.post("/chat/completions", json=big, headers=key)
    if kind == "malformed_json":
        return http.post(
            "/chat/completions",
            content=b'{"model": "' + model.encode() + b'", "messages": [',
            headers={**key, "Content-Type": "application/json"},
        )
    if kind == "wrong_key":
        return http.post("/chat/completions", json=chat, headers={"Authorization": "Bearer nope"})
    if kind == "no_key":
        return http.post("/chat/completions", json=chat)
    if kind == "admin_no_key":
        return http.get(admin_url + "/memory-stats")
    raise ValueError(kind)


def bad_lane(
    rest_url: str, model: str, record: Record, pacer: Pacer, deadline: float, stop: threading.Event
) -> None:
    kinds = list(BAD_EXPECTED)
    with httpx.Client(base_url=rest_url, timeout=30) as http:
        for i in range(1_000_000):
            if stop.is_set() or time.monotonic() > deadline:
                return
            kind = kinds[i % len(kinds)]
            if kind not in ("wrong_key", "no_key", "admin_no_key"):
                pacer.wait()  # counted against k1
            started = time.monotonic()
            try:
                response = bad_request(http, kind, model, "/admin")
                status: int | None = response.status_code
                try:
                    body = response.json()
                except ValueError:
                    body = None
                outcome = "200" if status == 200 else f"{status} {error_code(body)}"
                detail = "" if status == 200 else response.text[:160]
            except httpx.HTTPError as error:
                status, outcome, detail = None, f"transport {type(error).__name__}", str(error)
            record.add(Outcome(started, kind, outcome, status, time.monotonic() - started, detail))
            stop.wait(0.3)


def admin_lane(
    up: Up,
    rest_url: str,
    model: str,
    record: Record,
    deadline: float,
    stop: threading.Event,
    scale_every_s: float,
    first_scale_at: float,
) -> None:
    key = Path(up.info()["admin_key_file"]).read_text(encoding="utf-8").strip()
    headers = {"Authorization": f"Bearer {key}"}
    next_scale = first_scale_at
    with httpx.Client(base_url=rest_url, timeout=130, headers=headers) as http:

        def call(kind: str, send: Callable[[], httpx.Response]) -> None:
            started = time.monotonic()
            try:
                response = send()
                status: int | None = response.status_code
                try:
                    body = response.json()
                except ValueError:
                    body = None
                outcome = "200" if status == 200 else f"{status} {error_code(body)}"
                detail = "" if status == 200 else response.text[:160]
            except httpx.HTTPError as error:
                status, outcome, detail = None, f"transport {type(error).__name__}", str(error)
            record.add(Outcome(started, kind, outcome, status, time.monotonic() - started, detail))

        for _ in range(100_000):
            if stop.is_set() or time.monotonic() > deadline:
                return
            call("admin_memory_stats", lambda: http.get("/admin/memory-stats"))
            call("health", lambda: http.get("/health"))
            if time.monotonic() >= next_scale and time.monotonic() + 60 < deadline:
                begin = time.monotonic()
                call(
                    "admin_scale_0",
                    lambda: http.post("/admin/scale", json={"model_id": model, "replicas": 0}),
                )
                stop.wait(SCALE_ZERO_HOLD_S)
                call(
                    "admin_scale_1",
                    lambda: http.post("/admin/scale", json={"model_id": model, "replicas": 1}),
                )
                with record.lock:
                    record.scale_windows.append((begin, time.monotonic() + 5.0))
                next_scale = time.monotonic() + scale_every_s
            stop.wait(3.0)


def fault_lane(
    up: Up,
    record: Record,
    deadline: float,
    stop: threading.Event,
    every_s: float,
    first_at: float,
    seed: int,
) -> None:
    rng = random.Random(seed)
    next_at = first_at
    order: list[str] = []
    for _ in range(10_000):
        if stop.wait(max(0.0, min(next_at, deadline) - time.monotonic())):
            return
        if time.monotonic() + FAULT_WINDOW_S + 5 > deadline:
            return  # no kill whose window the run would not see
        if not order:  # each service once per round, in a random order
            order = rng.sample(KILLABLE, len(KILLABLE))
        service = order.pop()
        pid = up.pids().get(service)
        if pid is None:
            next_at = time.monotonic() + every_s
            continue
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            next_at = time.monotonic() + 1.0
            continue
        fault = Fault(time.monotonic(), service, pid)
        with record.lock:
            record.faults.append(fault)
        limit = time.monotonic() + RESTART_WAIT_S
        while time.monotonic() < limit and not stop.is_set():
            new = up.pids().get(service)
            if new is not None and new != pid:
                fault.back_after_s = time.monotonic() - fault.at
                break
            time.sleep(0.1)
        next_at = fault.at + every_s * rng.uniform(0.8, 1.2)


def rss_lane(
    up: Up, record: Record, deadline: float, stop: threading.Event, every_s: float
) -> None:
    for _ in range(100_000):
        now = time.monotonic()
        for name, pid in up.pids().items():
            try:
                rss = psutil.Process(pid).memory_info().rss
            except psutil.Error:
                continue  # just killed
            if rss == 0:
                continue  # a zombie, not reaped yet
            with record.lock:
                record.rss[name].append((now, pid, rss))
        if stop.wait(every_s) or time.monotonic() > deadline:
            return


# --- the table ---------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def unexpected(record: Record, o: Outcome) -> str | None:
    """Why ``o`` is not an expected outcome, None if it is."""
    context = record.context_of(o)
    in_fault = context.startswith("fault:")
    if o.kind in BAD_EXPECTED:
        if o.status in BAD_EXPECTED[o.kind]:
            return None
        if (o.status == 503 or o.status is None) and in_fault:
            return None
        return f"bad request answered {o.status}"
    if o.status is not None and o.status >= 500 and o.status != 503:
        return f"{o.status} (never expected)"
    if (o.status == 503 or o.status is None) and not in_fault:
        return f"{o.outcome} outside a fault window"
    if o.status == 200 and o.outcome != "200" and not in_fault:
        return "incomplete stream outside a fault window"
    if o.status is not None and 400 <= o.status < 500:
        return f"good request answered {o.status}"
    return None


def mb(n: int) -> str:
    return f"{n / 2**20:8.1f}"


def report(record: Record, up: Up, warmup_end: float, exit_code: int | None) -> str:
    lines: list[str] = []
    out = lines.append
    elapsed = time.monotonic() - record.started
    outcomes = record.outcomes
    out(f"soak: {elapsed / 60:.1f} min, {len(outcomes)} requests, {len(record.faults)} kills")
    out("")
    out("requests by kind           total      ok   p50 ms   p99 ms  (latency of ok ones)")
    by_kind: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        by_kind[o.kind].append(o)
    for kind in sorted(by_kind):
        group = by_kind[kind]
        ok = [o.latency_s * 1000 for o in group if o.outcome == "200"]
        out(
            f"  {kind:22} {len(group):7} {len(ok):7} {percentile(ok, 0.5):8.1f}"
            f" {percentile(ok, 0.99):8.1f}"
        )
    out("")
    out("outcomes by status / error code (all kinds)")
    for key, count in Counter(o.outcome for o in outcomes).most_common():
        out(f"  {key:44} {count:7}")
    out("")
    out("outcomes per kind")
    for kind in sorted(by_kind):
        counts = Counter(o.outcome for o in by_kind[kind]).most_common()
        out(f"  {kind:22} " + ", ".join(f"{k}: {n}" for k, n in counts))
    out("")
    bad = [(o, why) for o in outcomes if (why := unexpected(record, o)) is not None]
    in_window = Counter(
        f"{record.context_of(o)[6:]:10} {o.kind:18} {o.outcome}"
        for o in outcomes
        if record.context_of(o).startswith("fault:")
        and o.outcome != "200"
        and (o.kind not in BAD_EXPECTED or o.status not in BAD_EXPECTED[o.kind])
    )
    out(
        f"expected failures: requests overlapping a fault window ({FAULT_WINDOW_S:.0f} s"
        " after a kill), by service killed"
    )
    for key, count in in_window.most_common():
        out(f"  {key:44} {count:7}")
    out("")
    out(f"UNEXPECTED outcomes: {len(bad)}")
    for (reason, kind), count in Counter((why, o.kind) for o, why in bad).most_common():
        out(f"  {count:5} x {kind:20} {reason}")
    for o, why in bad[:25]:
        out(
            f"    t={o.at - record.started:7.1f}s {o.kind:18} {o.outcome:30}"
            f" ctx={record.context_of(o) or '-':16} {why}: {o.detail[:100]!r}"
        )
    out("")
    out("faults (kill -9)            t s   new pid after s   first chat served after s")
    for f in record.faults:
        back = f"{f.back_after_s:8.2f}" if f.back_after_s is not None else "  NOT BACK"
        served = f"{f.served_after_s:8.2f}" if f.served_after_s is not None else "       -"
        out(f"  {f.service:22} {f.at - record.started:8.1f}   {back}          {served}")
    kills = Counter(f.service for f in record.faults)
    printed = up.printed()
    restarted = Counter(
        line.split()[1] for line in printed.splitlines() if line.startswith("restarted ")
    )
    out("")
    out("service                kills  restarted lines")
    for name in sorted(set(kills) | set(restarted)):
        out(f"  {name:20} {kills[name]:6} {restarted[name]:8}")
    out(f"  total restarted lines in helios up's output: {sum(restarted.values())}")
    out("")
    out("RSS MB  process           start      max      end    drift pids  longest-lived pid:")
    out("        (start = first sample after warm-up)                       samples, drift")
    for name in sorted(record.rss):
        samples = [s for s in record.rss[name] if s[0] >= warmup_end] or record.rss[name]
        start, end = samples[0][2], samples[-1][2]
        peak = max(s[2] for s in samples)
        by_pid: dict[int, list[int]] = defaultdict(list)
        for _, pid, rss in samples:
            by_pid[pid].append(rss)
        longest = max(by_pid.values(), key=len)
        out(
            f"  {name:20} {mb(start)} {mb(peak)} {mb(end)} {mb(end - start)} {len(by_pid):4}"
            f"  {len(longest):5} {mb(longest[-1] - longest[0])}"
        )
    out("")
    out("RSS of processes never restarted, per sample after warm-up (MB, every ~5th):")
    for name in sorted(record.rss):
        samples = [s for s in record.rss[name] if s[0] >= warmup_end]
        if samples and len({s[1] for s in samples}) == 1:
            trail = [f"{s[2] / 2**20:.0f}" for s in samples[:: max(1, len(samples) // 12)]]
            out(f"  {name:20} " + " ".join(trail))
    out("")
    out(f"helios up exit code after SIGINT: {exit_code} (must be 0)")
    return "\n".join(lines)


def final_checks(up: Up, rest_url: str, model: str) -> list[str]:
    """After the run: every service alive, /v1/health ok, one chat served."""
    notes: list[str] = []
    for name, pid in up.pids().items():
        if not psutil.pid_exists(pid):
            notes.append(f"{name} (pid {pid}) is not running")
    health: Any = None
    for _ in range(60):
        try:
            health = httpx.get(rest_url + "/health", timeout=5).json()
            if health.get("status") == "ok":
                break
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(1)
    if isinstance(health, dict):
        states = {d.get("name"): d.get("state") for d in health.get("dependencies", [])}
        notes.append(f"final /v1/health: {health.get('status')}, {states}")
    else:
        notes.append(f"final /v1/health: {health!r}")
    client = openai.OpenAI(base_url=rest_url, api_key=API_KEY, max_retries=0, timeout=60)
    try:
        client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=2)
        notes.append("final chat: served")
    except openai.APIError as error:
        notes.append(f"final chat: FAILED {error}")
    return notes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--lanes", type=int, default=3, help="lanes of good traffic")
    parser.add_argument("--fault-every", type=float, default=60.0, help="seconds between kills")
    parser.add_argument("--scale-every", type=float, default=300.0, help="seconds")
    parser.add_argument("--sample-every", type=float, default=10.0, help="RSS, seconds")
    parser.add_argument("--warmup", type=float, default=None, help="seconds (default: 10%%)")
    parser.add_argument("--seed", type=int, default=16)
    args = parser.parse_args()
    duration = args.minutes * 60
    warmup = args.warmup if args.warmup is not None else min(120.0, 0.1 * duration)

    with tempfile.TemporaryDirectory(prefix="helios-soak-") as tmp:
        root = Path(tmp)
        model_dir = build_tiny_model(root / "home" / "models" / DEFAULT_MODEL_NAME)
        print(f"starting helios up in {root} ...", flush=True)
        up = start_up(root, model_dir)
        exit_code: int | None = None
        try:
            info = up.info()
            rest_url, model = str(info["rest_url"]), str(info["models"][0])
            assert rest_url.startswith("http://127.0.0.1:"), rest_url
            print(f"up: {rest_url}, model {model}; soaking {args.minutes} min", flush=True)
            record = Record(started=time.monotonic())
            deadline = record.started + duration
            warmup_end = record.started + warmup
            stop = threading.Event()
            pacer = Pacer(PACE_PER_S)
            threads = [
                threading.Thread(
                    target=good_lane,
                    args=(lane, rest_url, model, record, pacer, deadline, stop),
                    name=f"lane-{lane}",
                )
                for lane in range(args.lanes)
            ]
            threads += [
                threading.Thread(
                    target=bad_lane, args=(rest_url, model, record, pacer, deadline, stop)
                ),
                threading.Thread(
                    target=admin_lane,
                    args=(
                        up,
                        rest_url,
                        model,
                        record,
                        deadline,
                        stop,
                        args.scale_every,
                        warmup_end + args.scale_every / 2,
                    ),
                ),
                threading.Thread(
                    target=fault_lane,
                    args=(
                        up,
                        record,
                        deadline,
                        stop,
                        args.fault_every,
                        warmup_end,
                        args.seed,
                    ),
                ),
                threading.Thread(
                    target=rss_lane, args=(up, record, deadline, stop, args.sample_every)
                ),
            ]
            for thread in threads:
                thread.daemon = True
                thread.start()
            for _ in range(int(duration) + 1):
                if time.monotonic() >= deadline or up.process.poll() is not None:
                    break
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                elapsed = time.monotonic() - record.started
                if int(elapsed) % 60 == 0:
                    print(
                        f"  {elapsed / 60:4.1f} min: {len(record.outcomes)} requests,"
                        f" {len(record.faults)} kills",
                        flush=True,
                    )
            stop.set()
            for thread in threads:
                thread.join(timeout=150)
            alive = [t.name for t in threads if t.is_alive()]
            notes = [f"threads still running after the deadline: {alive}"] if alive else []
            if up.process.poll() is not None:
                notes.append(f"helios up ENDED during the run (exit {up.process.returncode})")
            else:
                notes += final_checks(up, rest_url, model)
        finally:
            exit_code = stop_up(up)
        print()
        print(report(record, up, warmup_end, exit_code))
        for note in notes:
            print(note)
        if exit_code != 0:
            print("--- helios up's output (tail) ---")
            print(up.printed()[-4000:])
    return 0 if exit_code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
