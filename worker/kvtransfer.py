"""KV-cache framing for prefill/decode disaggregation (domain: no protobuf).

A prefill worker's KV cache travels to the decode worker as a stream of frames. Each
frame is one layer's keys and values for a contiguous range of token positions, encoded
with safetensors:

- safetensors is self-describing (dtype + shape in a JSON header), needs no pickle (a
  peer cannot make us execute code), and loads without extra copies;
- one layer per frame lets the decode side rebuild the cache layer by layer while the
  rest is still arriving, and a token range keeps every frame under ``max_frame_bytes``
  (gRPC's default 4 MiB message limit stays far away even for long prompts and wide
  models), so a cache of any size streams in bounded memory per message.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from runtime.errors import InvalidArgumentError

DEFAULT_MAX_FRAME_BYTES = 1024 * 1024

KVLayer = tuple[torch.Tensor, torch.Tensor]
"""(keys, values) of one layer, each ``[batch, kv_heads, tokens, head_dim]``."""


@dataclass(frozen=True)
class KVFrame:
    """One slice of one layer: tokens ``token_offset .. token_offset + n`` of ``layer``."""

    layer: int
    num_layers: int
    token_offset: int
    data: bytes  # safetensors with tensors "key" and "value"


def encode_frames(
    layers: Sequence[KVLayer], max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> Iterator[KVFrame]:
    """Frames of ``layers``, in layer order then token order, each under the byte limit
    (a frame always holds at least one token, whatever its size)."""
    num_layers = len(layers)
    for index, (key, value) in enumerate(layers):
        tokens = int(key.shape[2])
        per_token = max(1, (key[:, :, :1].nbytes + value[:, :, :1].nbytes))
        step = max(1, max_frame_bytes // per_token)
        for start in range(0, max(tokens, 1), step):
            k = key[:, :, start : start + step].contiguous()
            v = value[:, :, start : start + step].contiguous()
            yield KVFrame(index, num_layers, start, st_save({"key": k, "value": v}))


@dataclass
class KVAssembler:
    """Rebuilds the layers from frames, checking that they are complete and in order."""

    layers: list[list[KVLayer]] = field(default_factory=list)
    num_layers: int = -1
    _next_offset: dict[int, int] = field(default_factory=dict)

    def add(self, frame: KVFrame) -> None:
        if self.num_layers < 0:
            if frame.num_layers <= 0:
                raise InvalidArgumentError("kv frame: num_layers must be > 0")
            self.num_layers = frame.num_layers
            self.layers = [[] for _ in range(frame.num_layers)]
        if frame.num_layers != self.num_layers or not 0 <= frame.layer < self.num_layers:
            raise InvalidArgumentError(
                f"kv frame: layer {frame.layer} of {frame.num_layers} does not fit a cache of"
                f" {self.num_layers} layers"
            )
        expected = self._next_offset.get(frame.layer, 0)
        if frame.token_offset != expected:
            raise InvalidArgumentError(
                f"kv frame: layer {frame.layer} token offset {frame.token_offset}, expected"
                f" {expected}"
            )
        try:
            tensors = st_load(frame.data)
            key, value = tensors["key"], tensors["value"]
        except Exception as exc:
            raise InvalidArgumentError(f"kv frame: not safetensors key/value: {exc}") from exc
        if key.shape != value.shape or key.dim() != 4:
            raise InvalidArgumentError(
                f"kv frame: key {tuple(key.shape)} and value {tuple(value.shape)} must be equal"
                " 4-D shapes"
            )
        self.layers[frame.layer].append((key, value))
        self._next_offset[frame.layer] = expected + int(key.shape[2])

    def finish(self) -> list[KVLayer]:
        """The complete layers; raises if any layer is missing or lengths disagree."""
        if self.num_layers < 0:
            raise InvalidArgumentError("kv cache transfer carried no frames")
        lengths = {self._next_offset.get(i, -1) for i in range(self.num_layers)}
        if len(lengths) != 1 or -1 in lengths:
            raise InvalidArgumentError(
                f"kv cache transfer is incomplete: tokens per layer {sorted(lengths)}"
            )
        out: list[KVLayer] = []
        for parts in self.layers:
            keys = torch.cat([k for k, _ in parts], dim=2)
            values = torch.cat([v for _, v in parts], dim=2)
            out.append((keys, values))
        return out
