"""``helios estimate MODEL``: a model's memory needs, broken down, as a table.

MODEL is a Hugging Face-layout directory (its config.json is read) or a config.json file.
Runs the estimator in-process (no server needed).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from estimator.config_json import parse_architecture
from estimator.estimate_params import MODES, OPTIMIZERS, EstimateParams
from estimator.memory import Estimate, estimate_memory
from estimator.models import parse_config_bytes
from estimator.planning import recommend
from runtime.errors import HeliosError, InvalidArgumentError, NotFoundError

__all__ = ["add_estimate_command", "estimate_command", "format_bytes", "render_estimate"]

_GiB = 1 << 30


def format_bytes(n: int) -> str:
    """Bytes in a human unit (binary: KiB, MiB, GiB, TiB)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} TiB"


def load_config(target: str) -> dict[str, Any]:
    path = Path(target).expanduser()
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise NotFoundError(f"{target}: no such model directory or config.json file")
    return parse_config_bytes(file.read_bytes(), str(file))


def _table(rows: Sequence[tuple[str, str, str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for i, row in enumerate(rows):
        out.write(
            f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:>{widths[2]}}\n".rstrip() + "\n"
        )
        if i == 0:
            out.write("  ".join("-" * w for w in widths if w).rstrip() + "\n")


def render_estimate(est: Estimate, out: TextIO) -> None:
    """The breakdown table (whole model and, with a parallel layout, per GPU)."""
    p = est.params
    out.write(
        f"model_type {est.model_type} ({est.confidence}), {est.parameter_count:,} parameters"
        + (
            f" ({est.active_parameter_count:,} active)"
            if est.active_parameter_count != est.parameter_count
            else ""
        )
        + "\n"
    )
    out.write(
        f"mode {p.mode}, dtype {p.dtype}, kv_cache_dtype {p.kv_cache_dtype},"
        f" batch {p.batch_size} x {p.max_seq_len} tokens,"
        f" KV cache {est.kv_cache_bytes_per_token:,} bytes/token\n\n"
    )
    per_gpu = est.gpu_count > 1
    header = ("part", "bytes", f"per GPU (x{est.gpu_count})" if per_gpu else "")
    rows: list[tuple[str, str, str]] = [header]
    for label, name in (
        ("weights", "weights"),
        ("KV cache", "kv_cache"),
        ("activations", "activations"),
        ("overhead", "overhead"),
        ("optimizer", "optimizer"),
        ("gradients", "gradients"),
    ):
        whole = getattr(est.model, name)
        gpu = getattr(est.per_gpu, name)
        if p.mode == "inference" and name in ("optimizer", "gradients"):
            continue
        if p.mode != "inference" and name == "kv_cache":
            continue
        rows.append((label, format_bytes(whole), format_bytes(gpu) if per_gpu else ""))
    rows.append(
        (
            "total",
            format_bytes(est.model.total),
            format_bytes(est.per_gpu.total) if per_gpu else "",
        )
    )
    _table(rows, out)
    if est.trainable_parameter_count and p.mode != "training":
        out.write(f"\ntrainable parameters: {est.trainable_parameter_count:,}\n")
    if est.fit is not None:
        f = est.fit
        verdict = "fits" if f.fits else "does NOT fit"
        out.write(
            f"\n{f.gpu}: {verdict} ({format_bytes(f.required_bytes)} of"
            f" {format_bytes(f.usable_bytes)} usable, headroom {format_bytes(f.headroom_bytes)})"
        )
        if p.mode == "inference" and f.fits:
            out.write(
                f"; KV room for {f.kv.tokens:,} tokens,"
                f" {f.kv.max_concurrent_sequences} sequences of {p.max_seq_len}"
            )
        out.write("\n")
    for note in est.notes:
        out.write(f"note: {note}\n")


def estimate_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        config = load_config(args.model)
        arch = parse_architecture(config)
        params = EstimateParams(
            dtype=args.dtype,
            kv_cache_dtype=args.kv_cache_dtype,
            batch_size=args.batch_size,
            max_seq_len=args.max_seq_len,
            mode=args.mode,
            tensor_parallel_size=args.tensor_parallel_size,
            pipeline_parallel_size=args.pipeline_parallel_size,
            quant_group_size=args.quant_group_size,
            gpu=args.gpu,
            gpu_memory_utilization=args.gpu_memory_utilization,
            optimizer=args.optimizer,
            lora_rank=args.lora_rank,
            lora_target_modules=tuple(args.lora_target_modules or ()),
            activation_checkpointing=args.activation_checkpointing,
            zero_stage=args.zero_stage,
            num_gpus=args.num_gpus,
        )
        est = estimate_memory(arch, params)
        if args.json:
            json.dump(_as_dict(est), out, indent=2)
            out.write("\n")
            return 0
        render_estimate(est, out)
        if args.recommend:
            recs = recommend([(arch, params)], smallest_only=True)
            out.write("\nGPU layouts that fit (cheapest first, smallest count per GPU):\n")
            if not recs.items:
                out.write(f"  none: {recs.reason}\n")
            rows = [("gpu x count", "per GPU", "headroom")]
            rows += [
                (f"{r.gpu} x{r.count}", format_bytes(r.required_bytes),
                 format_bytes(r.headroom_bytes))
                for r in recs.items
            ]  # fmt: skip
            if recs.items:
                _table(rows, out)
    except (InvalidArgumentError, NotFoundError, HeliosError) as exc:
        print(f"helios estimate: {exc.message}", file=sys.stderr)
        return 2
    return 0


def _as_dict(est: Estimate) -> dict[str, Any]:
    def parts(p: Any) -> dict[str, int]:
        return {
            "weights_bytes": p.weights,
            "kv_cache_bytes": p.kv_cache,
            "activation_bytes": p.activations,
            "overhead_bytes": p.overhead,
            "optimizer_bytes": p.optimizer,
            "gradient_bytes": p.gradients,
            "total_bytes": p.total,
        }

    return {
        "model_type": est.model_type,
        "confidence": est.confidence,
        "parameter_count": est.parameter_count,
        "kv_cache_bytes_per_token": est.kv_cache_bytes_per_token,
        **parts(est.model),
        "per_gpu": parts(est.per_gpu),
        "gpu_count": est.gpu_count,
        "notes": list(est.notes),
    }


def add_estimate_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``estimate`` to the ``helios`` sub-commands (``parser.add_subparsers()``)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "estimate", help="GPU memory a model needs (weights, KV cache, activations, ...)"
    )
    p.add_argument("model", help="HF-layout model directory, or a config.json file")
    p.add_argument("--dtype", default="", help="fp32, fp16, bf16, fp8, int8, int4 (default: auto)")
    p.add_argument("--kv-cache-dtype", default="", help="KV cache dtype (default: as --dtype)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--max-seq-len", type=int, default=0, help="default: the model's maximum")
    p.add_argument("--mode", default="inference", choices=MODES)
    p.add_argument("--tensor-parallel-size", "--tp", type=int, default=1)
    p.add_argument("--pipeline-parallel-size", "--pp", type=int, default=1)
    p.add_argument("--quant-group-size", type=int, default=128)
    p.add_argument("--gpu", default="", help="a catalog GPU, e.g. H100-80GB or L4")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS)
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--lora-target-modules", nargs="*", default=None)
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--zero-stage", type=int, default=0)
    p.add_argument("--num-gpus", type=int, default=1)
    p.add_argument("--recommend", action="store_true", help="also list GPU layouts that fit")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=estimate_command)
    return p
