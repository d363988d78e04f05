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

Grouped-query attention (``n_kv_heads`` = G < H key/value heads, Llama-family models): the model computes one
key and one value per group, so the k and v inputs are the groups' (``a{l}.kv{g}<k>``, ``a{l}.kv{g}<v>``), and q
inputs stay per query head; a layer's destinations are then ``H`` q, ``G`` k, ``G`` v and the MLP
(n_dst = L(H + 2G + 1) + 1). Group g's inputs feed query heads g*H/G .. (g+1)*H/G - 1 (HF's ``repeat_kv``); an edge
into a group's k or v belongs to every head of the group (:attr:`Graph.dst_feeds`). Without groups the layout and
names are exactly the ungrouped ones above.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from circuittrack.errors import InvalidInput

if TYPE_CHECKING:
    import torch

QKV = ("q", "k", "v")


@dataclass(frozen=True)
class Graph:
    """Node and edge layout of a transformer with ``n_layers`` x ``n_heads`` heads."""

    n_layers: int
    n_heads: int
    parallel_attn_mlp: bool = True
    n_kv_heads: int | None = None  # key/value heads (grouped-query attention); None: one per query head

    def __post_init__(self) -> None:
        if self.n_layers < 1 or self.n_heads < 1:
            raise InvalidInput(f"a graph needs n_layers >= 1 and n_heads >= 1, got {self.n_layers}, {self.n_heads}")
        if self.n_kv_heads is not None:
            if not 1 <= self.n_kv_heads <= self.n_heads or self.n_heads % self.n_kv_heads:
                raise InvalidInput(f"n_kv_heads must divide n_heads = {self.n_heads}, got {self.n_kv_heads}")
            if self.n_kv_heads == self.n_heads:
                object.__setattr__(self, "n_kv_heads", None)  # one layout, one spelling

    @classmethod
    def from_config(cls, config) -> Graph:
        """Build from a Hugging Face config (GPT-NeoX, GPT-2 or Llama style) or anything with the same fields."""
        n_layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer")
        n_heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head")
        parallel = bool(getattr(config, "use_parallel_residual", getattr(config, "parallel_attn_mlp", False)))
        kv = getattr(config, "num_key_value_heads", None)
        return cls(int(n_layers), int(n_heads), parallel, int(kv) if kv else None)

    # ----- sizes and indices -------------------------------------------------------------------------
    @property
    def n_groups(self) -> int:
        """Key/value heads per layer (= n_heads without grouped-query attention)."""
        return self.n_kv_heads or self.n_heads

    @property
    def grouped(self) -> bool:
        return self.n_kv_heads is not None

    def heads_of(self, qkv: str) -> int:
        """Destinations of one kind per layer: H for q, G for k and v."""
        return self.n_heads if qkv == "q" else self.n_groups

    @property
    def _block(self) -> int:  # destination columns per layer
        return self.n_heads + 2 * self.n_groups + 1

    @property
    def n_head_inputs(self) -> int:
        """q, k and v destination columns per layer (3H, or H + 2G with groups)."""
        return self._block - 1

    @property
    def n_src(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    @property
    def n_dst(self) -> int:
        return self.n_layers * self._block + 1

    def src_head(self, layer: int, head: int) -> int:
        return 1 + layer * (self.n_heads + 1) + head

    def src_mlp(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def dst_head(self, layer: int, head: int, qkv: str) -> int:
        """Column of head ``head``'s input ``qkv``; for k and v of a grouped graph ``head`` is the group."""
        offset = {"q": 0, "k": self.n_heads, "v": self.n_heads + self.n_groups}[qkv]
        return layer * self._block + offset + head

    def dst_mlp(self, layer: int) -> int:
        return layer * self._block + self.n_head_inputs

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
            names += [f"a{l}.h{h}<q>" for h in range(self.n_heads)]
            for t in ("k", "v"):
                names += [f"a{l}.kv{g}<{t}>" if self.grouped else f"a{l}.h{g}<{t}>" for g in range(self.n_groups)]
            names.append(f"m{l}")
        return names + ["logits"]

    @cached_property
    def dst_node(self) -> list[str]:
        """Node name of each destination column (``a0.h1<q>`` -> ``a0.h1``; a group's ``a0.kv1<k>`` -> ``a0.kv1``)."""
        return [n.split("<")[0] for n in self.dst_names]

    def group_heads(self, group: int) -> range:
        """Query heads that read key/value group ``group``."""
        r = self.n_heads // self.n_groups
        return range(group * r, (group + 1) * r)

    @cached_property
    def dst_feeds(self) -> torch.Tensor:
        """long [n_dst, R] (R = H / G): the node numbers (source rows; logits = n_src) each destination column is
        an input of, repeated to width R for columns that feed one node (all columns without groups)."""
        import torch  # here, not at the top: the figures draw graphs by name without importing torch

        R = self.n_heads // self.n_groups
        idx = torch.empty(self.n_dst, R, dtype=torch.long)
        for l in range(self.n_layers):
            for h in range(self.n_heads):
                idx[self.dst_head(l, h, "q")] = self.src_head(l, h)
            for g in range(self.n_groups):
                heads = torch.tensor([self.src_head(l, h) for h in self.group_heads(g)])
                for t in ("k", "v"):
                    idx[self.dst_head(l, g, t)] = heads
            idx[self.dst_mlp(l)] = self.src_mlp(l)
        idx[self.dst_logits] = self.n_src
        return idx

    @cached_property
    def edge_mask(self) -> torch.Tensor:
        """[n_src, n_dst] bool: which edges exist."""
        import torch

        mask = torch.zeros(self.n_src, self.n_dst, dtype=torch.bool)
        for l in range(self.n_layers):
            first = self.dst_head(l, 0, "q")
            mask[: self.n_src_before_layer(l), first : first + self.n_head_inputs] = True
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

    def describe(self) -> str:
        """``3-layer, 4-head`` (``..., 2 key/value groups`` with grouped-query attention)."""
        groups = f", {self.n_groups} key/value groups" if self.grouped else ""
        return f"{self.n_layers}-layer, {self.n_heads}-head{groups}"

    def parse_edge(self, name: str) -> tuple[int, int]:
        """(src, dst) matrix index of an edge name; a clear error for names that are not edges."""
        try:
            u, v = name.split("->")
            i, j = self.src_names.index(u), self.dst_names.index(v)
        except ValueError:
            raise InvalidInput(f"{name!r} is not an edge name like 'a0.h1->a1.h2<q>' or 'input->m0' "
                             f"in a {self.describe()} graph") from None
        if not self.edge_mask[i, j]:
            raise InvalidInput(f"{name!r} is not an edge of this graph (its source is not upstream of its target)")
        return i, j


def count_edges(n_layers: int, n_heads: int, parallel_attn_mlp: bool = True, n_kv_heads: int | None = None) -> int:
    """Closed-form edge count, for checking :class:`Graph` against the paper's numbers (q inputs per head,
    k and v per key/value head)."""
    H, G = n_heads, n_kv_heads or n_heads
    total = 0
    for l in range(n_layers):
        before = 1 + l * (H + 1)
        total += before * (H + 2 * G) + before + (0 if parallel_attn_mlp else H)
    return total + 1 + n_layers * (H + 1)
