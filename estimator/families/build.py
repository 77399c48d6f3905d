""":class:`FamilyBuild`: the mutable inventory a family function fills in (dimensions,
linear groups, norms and biases), which :func:`estimator.config_json.parse_architecture`
freezes into an :class:`estimator.architecture.Architecture`."""

from __future__ import annotations

from dataclasses import dataclass, field

from estimator.architecture import LinearGroup, MlaDims, MoeDims


@dataclass
class FamilyBuild:
    """What a family function fills in; :func:`parse_architecture` freezes it."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    max_pos: int | None
    tied: bool
    embedding: int = 0
    lm_head: int = 0
    groups: list[LinearGroup] = field(default_factory=list)
    other: int = 0
    windows: tuple[int | None, ...] = ()
    mla: MlaDims | None = None
    moe: MoeDims | None = None
    notes: list[str] = field(default_factory=list)

    def linear(
        self,
        name: str,
        in_f: int,
        out_f: int,
        *,
        kind: str,
        layers: int | None = None,
        copies: int = 1,
        bias: bool = False,
    ) -> None:
        n = self.layers if layers is None else layers
        if n <= 0:
            return
        self.groups.append(LinearGroup(name, in_f, out_f, n, kind, copies))
        if bias:
            self.other += out_f * n * copies

    def norms(self, size: int, count: int, *, with_bias: bool = False) -> None:
        self.other += size * count * (2 if with_bias else 1)

    def head(self) -> None:
        self.lm_head = 0 if self.tied else self.vocab * self.hidden
