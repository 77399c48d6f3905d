""":class:`FamilyBuild`: the mutable inventory a family function fills in (dimensions,
linear groups, norms and biases), which :func:`estimator.config_json.parse_architecture`
freezes into an :class:`estimator.architecture.Architecture`."""

from __future__ import annotations

from dataclasses import dataclass, field

from estimator.architecture import LinearGroup, MlaDims, MoeDims
from estimator.families.config_reader import MAX_LAYERS, ConfigReader, divide_exactly


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


def standard_dims(c: ConfigReader) -> tuple[int, int, int]:
    """(hidden, heads, layers) under the config keys most families use."""
    hidden = c.integer("hidden_size")
    heads = c.integer("num_attention_heads")
    layers = c.integer("num_hidden_layers", maximum=MAX_LAYERS)
    return hidden, heads, layers


def decoder_build(
    c: ConfigReader,
    hidden: int,
    heads: int,
    layers: int,
    *,
    intermediate: int,
    max_pos: int | None,
    tied: bool,
    kv_heads: int | None = None,
    head_dim: int | None = None,
    names: tuple[str, str] = ("hidden_size", "num_attention_heads"),
    mla: MlaDims | None = None,
) -> FamilyBuild:
    """A decoder's build with the vocabulary from the config, token embeddings, an LM
    head unless tied, and no sliding windows (a family with other embeddings, head or
    windows sets its own). ``kv_heads`` None: full multi-head attention;
    ``head_dim`` None: ``hidden`` split exactly into ``heads`` (``names``: their config
    keys, for the error)."""
    b = FamilyBuild(
        vocab=c.integer("vocab_size"),
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=heads if kv_heads is None else kv_heads,
        head_dim=(
            divide_exactly(c, names[0], hidden, names[1], heads) if head_dim is None else head_dim
        ),
        intermediate=intermediate,
        max_pos=max_pos,
        tied=tied,
        mla=mla,
    )
    b.embedding = b.vocab * hidden
    b.head()
    b.windows = (None,) * layers
    return b
