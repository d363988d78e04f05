"""The computational graph that circuits are drawn from.

Nodes: ``input`` (token embeddings), each attention head ``a{l}.h{h}``, each MLP ``m{l}`` and ``logits``.
Edges run from every upstream node to every downstream node through the residual stream; a head has three
inputs (q, k, v), so an edge into a head names its input: ``a0.h1->a3.h2<q>``. This is the naming of the
reference EAP-IG code, so circuits compare across tools.

Edges are stored densely as a ``[n_src, n_dst]`` matrix:

* sources (rows): ``input``, then per layer ``a{l}.h0 .. a{l}.h{H-1}, m{l}``      (n_src = 1 + L(H+1))
* destinations (columns): per layer ``a{l}.h*<q>, a{l}.h*<k>, a{l}.h*<v>, m{l}``, then ``logits``
  (n_dst = L(3H+1) + 1)

``edge_mask[s, d]`` is True where the edge exists. With parallel attention and MLP (GPT-NeoX, Pythia) MLP l
receives only from nodes before layer l; with sequential blocks (GPT-2) it also receives from layer l's heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from circuittrack.errors import InvalidInput

QKV = ("q", "k", "v")


@dataclass(frozen=True)
class Graph:
    """Node and edge layout of a transformer with ``n_layers`` x ``n_heads`` heads."""

    n_layers: int
    n_heads: int
    parallel_attn_mlp: bool = True

    def __post_init__(self) -> None:
        if self.n_layers < 1 or self.n_heads < 1:
            raise InvalidInput(f"a graph needs n_layers >= 1 and n_heads >= 1, got {self.n_layers}, {self.n_heads}")

    @classmethod
    def from_config(cls, config) -> Graph:
        """Build from a Hugging Face config (GPT-NeoX or GPT-2 style) or anything with the same fields."""
        n_layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer")
        n_heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head")
        parallel = bool(getattr(config, "use_parallel_residual", getattr(config, "parallel_attn_mlp", False)))
        return cls(int(n_layers), int(n_heads), parallel)

    # ----- sizes and indices -------------------------------------------------------------------------
    @property
    def n_src(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    @property
    def n_dst(self) -> int:
        return self.n_layers * (3 * self.n_heads + 1) + 1

    def src_head(self, layer: int, head: int) -> int:
        return 1 + layer * (self.n_heads + 1) + head

    def src_mlp(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def dst_head(self, layer: int, head: int, qkv: str) -> int:
        return layer * (3 * self.n_heads + 1) + QKV.index(qkv) * self.n_heads + head

    def dst_mlp(self, layer: int) -> int:
        return layer * (3 * self.n_heads + 1) + 3 * self.n_heads

    @property
    def dst_logits(self) -> int:
        return self.n_dst - 1

    def n_src_before_layer(self, layer: int) -> int:
        """Number of sources upstream of layer ``layer``'s attention: input and all earlier layers."""
        return 1 + layer * (self.n_heads + 1)

    def n_src_into_mlp(self, layer: int) -> int:
        """Number of sources feeding MLP ``layer`` (includes layer's own heads when blocks are sequential)."""
        return self.n_src_before_layer(layer) + (0 if self.parallel_attn_mlp else self.n_heads)

    # ----- names -------------------------------------------------------------------------------------
    @cached_property
    def src_names(self) -> list[str]:
        names = ["input"]
        for l in range(self.n_layers):
            names += [f"a{l}.h{h}" for h in range(self.n_heads)] + [f"m{l}"]
        return names

    @cached_property
    def dst_names(self) -> list[str]:
        names: list[str] = []
        for l in range(self.n_layers):
            for t in QKV:
                names += [f"a{l}.h{h}<{t}>" for h in range(self.n_heads)]
            names.append(f"m{l}")
        return names + ["logits"]

    @cached_property
    def dst_node(self) -> list[str]:
        """Node name of each destination column (``a0.h1<q>`` -> ``a0.h1``)."""
        return [n.split("<")[0] for n in self.dst_names]

    @cached_property
    def edge_mask(self) -> torch.Tensor:
        """[n_src, n_dst] bool: which edges exist."""
        mask = torch.zeros(self.n_src, self.n_dst, dtype=torch.bool)
        H = self.n_heads
        for l in range(self.n_layers):
            first = self.dst_head(l, 0, "q")
            mask[: self.n_src_before_layer(l), first : first + 3 * H] = True
            mask[: self.n_src_into_mlp(l), self.dst_mlp(l)] = True
        mask[:, self.dst_logits] = True
        return mask

    @property
    def n_edges(self) -> int:
        return int(self.edge_mask.sum())

    @cached_property
    def edge_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(src, dst) index tensors of the real edges, in row-major order."""
        src, dst = self.edge_mask.nonzero(as_tuple=True)
        return src, dst

    def edge_names(self) -> list[str]:
        """Names of the real edges (``u->v``), in the order of :attr:`edge_index`."""
        src, dst = self.edge_index
        s, d = self.src_names, self.dst_names
        return [f"{s[i]}->{d[j]}" for i, j in zip(src.tolist(), dst.tolist())]

    def parse_edge(self, name: str) -> tuple[int, int]:
        """(src, dst) matrix index of an edge name; a clear error for names that are not edges."""
        try:
            u, v = name.split("->")
            i, j = self.src_names.index(u), self.dst_names.index(v)
        except ValueError:
            raise InvalidInput(f"{name!r} is not an edge name like 'a0.h1->a1.h2<q>' or 'input->m0' "
                             f"in a {self.n_layers}-layer, {self.n_heads}-head graph") from None
        if not self.edge_mask[i, j]:
            raise InvalidInput(f"{name!r} is not an edge of this graph (its source is not upstream of its target)")
        return i, j


def count_edges(n_layers: int, n_heads: int, parallel_attn_mlp: bool = True) -> int:
    """Closed-form edge count, for checking :class:`Graph` against the paper's numbers."""
    H = n_heads
    total = 0
    for l in range(n_layers):
        before = 1 + l * (H + 1)
        total += before * 3 * H + before + (0 if parallel_attn_mlp else H)
    return total + 1 + n_layers * (H + 1)
