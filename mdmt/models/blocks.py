"""Multi-task blocks: map a backbone's output to one representation per task (DESIGN §2).

The middle of the three plug-in parts (backbone H × multi-task block × head). Every block has
``forward(x [B, H], domain [B]) -> [B, T, d]`` and ``out_dim = d``; ``domain`` is there for
blocks that route by domain (the generic ones below ignore it). ``shared`` and ``mmoe`` also take
one input per task, ``x [B, T, H]`` (task-specific bottoms such as DTRN's ``r_t``): each task then
reads its own input (``mmoe``: task ``t``'s gate mixes the experts applied to ``x_t``).

======== ========================================================================================
shared   SharedBottom: every task reads the same ``x`` (``d = H``)
mmoe     MMoE (Ma et al., KDD'18): ``f^k(x) = Σ_i softmax(W_gk x)_i f_i(x)`` over ``E`` shared experts
ple      PLE (Tang et al., RecSys'20): ``N`` levels of Customized Gate Control (:class:`CGCLevel`)
======== ========================================================================================

Example::

    >>> import torch
    >>> block = build_block("mmoe", in_dim=8, num_tasks=2, cfg=BlockConfig(num_experts=3, expert_hidden=[16]))
    >>> block(torch.randn(4, 8), torch.zeros(4, dtype=torch.long)).shape
    torch.Size([4, 2, 16])
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, NonNegativeInt, PositiveInt
from torch import Tensor, nn

from ..layers import Activation, Gate, Norm, ParallelMLP
from ..schema import ConfigError, StrictModel

__all__ = [
    "BlockKind",
    "BLOCKS",
    "BlockConfig",
    "Block",
    "SharedBlock",
    "MMoEBlock",
    "CGCLevel",
    "PLEBlock",
    "build_block",
]

BlockKind = Literal["shared", "mmoe", "ple"]
BLOCKS: tuple[str, ...] = ("shared", "mmoe", "ple")


class BlockConfig(StrictModel):
    """Settings of a multi-task block; each kind reads the fields it needs.

    Attributes:
        num_experts: ``E`` shared experts (``mmoe``).
        expert_hidden: widths of each expert MLP; its output is the last width (``mmoe``, ``ple``).
        num_levels: ``N`` CGC levels (``ple``).
        specific_experts: ``m_k`` task-specific experts per task and level (``ple``).
        shared_experts: ``m_s`` shared experts per level (``ple``).
    """

    num_experts: PositiveInt = 4
    expert_hidden: list[PositiveInt] = Field(default_factory=lambda: [64], min_length=1)
    num_levels: PositiveInt = 2
    specific_experts: NonNegativeInt = 1
    shared_experts: PositiveInt = 1


class Block(nn.Module):
    """Base: ``forward(x [B, H], domain [B]) -> [B, T, out_dim]``."""

    out_dim: int
    num_tasks: int

    def forward(self, x: Tensor, domain: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class SharedBlock(Block):
    """SharedBottom's sharing: every task reads the backbone's ``x`` itself. ``[B, H] -> [B, T, H]``.

    With ``expand=False`` it hands ``x`` ``[B, H]`` on unchanged, for a head that reads one
    representation for every task (``Head.shared_input``): the same logits, without a
    ``[B, T, H]`` gradient in the backward pass.
    """

    def __init__(self, in_dim: int, num_tasks: int, expand: bool = True) -> None:
        super().__init__()
        self.out_dim, self.num_tasks, self.expand = in_dim, num_tasks, expand

    def forward(self, x: Tensor, domain: Tensor) -> Tensor:
        if not self.expand or x.dim() == 3:
            return x  # [B, H]: every task's representation; [B, T, H]: each task's own
        return x.unsqueeze(1).expand(-1, self.num_tasks, -1)  # a view: no copy


class MMoEBlock(Block):
    """Multi-gate Mixture-of-Experts: ``E`` experts ``f_i`` and one softmax gate per task.

    ``g^k(x) = softmax(W_gk x)`` (``[E]``) and ``f^k(x) = Σ_i g^k(x)_i f_i(x)``.

    Shapes: ``x`` ``[B, H]`` -> experts ``[B, E, He]`` -> gates ``[B, T, E]`` -> ``[B, T, He]``.
    With one input per task, ``x`` ``[B, T, H]``: ``f^k(x_k) = Σ_i softmax(W_gk x_k)_i f_i(x_k)``,
    experts ``[B, T, E, He]`` -> ``[B, T, He]``.
    """

    def __init__(
        self, in_dim: int, num_tasks: int, num_experts: int, hidden: list[int], dropout: float = 0.0,
        act: str = "relu", norm: Norm = "none",
    ) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        self.experts = ParallelMLP(in_dim, hidden, num_experts, dropout=dropout, act=act, norm=norm)
        self.gates = Gate(in_dim, num_experts, num_gates=num_tasks)
        self.out_dim = self.experts.out_dim

    def forward(self, x: Tensor, domain: Tensor) -> Tensor:
        if x.dim() == 3:  # one input per task: every expert applied to each task's x_k
            B, T, H = x.shape
            f = self.experts(x.reshape(B * T, H)).view(B, T, self.experts.num, -1)  # f_i(x_k): [B, T, E, He]
            return self.gates(x, f)  # Σ_i softmax(W_gk x_k)_i f_i(x_k): [B, T, He]
        f = self.experts(x)  # expert outputs f_i(x): [B, E, He]
        return self.gates(x, f)  # f^k(x) = Σ_i softmax(W_gk x)_i f_i(x): [B, T, He]


class CGCLevel(nn.Module):
    """One Customized Gate Control level of PLE.

    Experts are laid out task by task (task ``k``: ``[k·m_k, (k+1)·m_k)``), then the shared ones.
    Task ``k``'s experts read ``g^{k,j-1}``, the shared experts ``g^{s,j-1}``; task ``k``'s gate
    fuses its own and the shared experts, the shared gate (levels < N) all of them.

    Shapes:
        input: ``[B, in]`` at the first level (every expert and gate reads ``x``), else
        ``[B, T+1, in]`` = ``(g^{1,j-1}, ..., g^{T,j-1}, g^{s,j-1})``.
        output: ``[B, T+1, He]`` (task outputs, then the shared one), or ``[B, T, He]`` at the last level.
    """

    def __init__(
        self,
        in_dim: int,
        num_tasks: int,
        specific: int,
        shared: int,
        hidden: list[int],
        last: bool,
        dropout: float = 0.0,
        act: str = "relu",
        norm: Norm = "none",
    ) -> None:
        super().__init__()
        T, m, s = num_tasks, specific, shared
        self.num_tasks, self.last = T, last
        self.experts = ParallelMLP(in_dim, hidden, T * m + s, dropout=dropout, act=act, norm=norm)
        self.out_dim = self.experts.out_dim
        self.task_gates = Gate(in_dim, m + s, num_gates=T)
        self.shared_gate = None if last else Gate(in_dim, T * m + s, num_gates=1)
        # which input each expert reads: its task's output (0..T-1) or the shared output (T)
        group = torch.cat([torch.arange(T).repeat_interleave(m), torch.full((s,), T)])
        # S^k: the experts task k's gate fuses (its own, then the shared ones): [T, m + s]
        own = torch.arange(T).unsqueeze(1) * m + torch.arange(m).unsqueeze(0)
        selected = torch.cat([own, (T * m + torch.arange(s)).unsqueeze(0).expand(T, s)], dim=1)
        self.register_buffer("expert_group", group, persistent=False)
        self.register_buffer("task_experts", selected, persistent=False)

    def forward(self, g: Tensor) -> Tensor:
        first = g.dim() == 2
        # index_select (backward: a scatter-add) rather than advanced indexing (an index_put)
        e = self.experts(g if first else g.index_select(1, self.expert_group))  # level j's experts: [B, E, He]
        task_sel = g if first else g[:, : self.num_tasks]  # g^{k,j-1}: [B, in] or [B, T, in]
        sel = e.index_select(1, self.task_experts.reshape(-1)).view(e.shape[0], *self.task_experts.shape, -1)
        out = self.task_gates(task_sel, sel)  # g^{k,j} = w^{k,j} S^{k,j}: [B, T, He]
        if self.shared_gate is None:
            return out
        shared_sel = g if first else g[:, self.num_tasks :]  # g^{s,j-1}
        shared = self.shared_gate(shared_sel, e)  # g^{s,j} over all experts: [B, 1, He]
        return torch.cat([out, shared], dim=1)


class PLEBlock(Block):
    """Progressive Layered Extraction: ``N`` CGC levels, ``g^{k,0} = g^{s,0} = x``.

    Shapes: ``x`` ``[B, H]`` -> levels ``[B, T+1, He]`` ... -> last level ``[B, T, He]``.
    """

    def __init__(
        self, in_dim: int, num_tasks: int, cfg: BlockConfig, dropout: float = 0.0, act: str = "relu",
        norm: Norm = "none",
    ) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        levels, d = [], in_dim
        for j in range(cfg.num_levels):
            level = CGCLevel(
                d, num_tasks, cfg.specific_experts, cfg.shared_experts, cfg.expert_hidden,
                last=j == cfg.num_levels - 1, dropout=dropout, act=act, norm=norm,
            )
            levels.append(level)
            d = level.out_dim
        self.levels = nn.ModuleList(levels)
        self.out_dim = d

    def forward(self, x: Tensor, domain: Tensor) -> Tensor:
        g = x  # g^{k,0} = g^{s,0} = x
        for level in self.levels:
            g = level(g)  # CGC level j
        return g  # g^{k,N}: [B, T, He]


def build_block(
    kind: BlockKind, in_dim: int, num_tasks: int, cfg: BlockConfig | None = None, dropout: float = 0.0,
    act: Activation = "relu", norm: Norm = "none", expand: bool = True,
) -> Block:
    """Build block ``kind`` over ``[B, in_dim]`` for ``num_tasks`` tasks; the result has ``.out_dim``.

    ``expand=False``: the ``shared`` block hands on ``[B, in_dim]`` (for a head with ``shared_input``).
    """
    cfg = cfg or BlockConfig()
    if kind == "shared":
        return SharedBlock(in_dim, num_tasks, expand)
    if kind == "mmoe":
        return MMoEBlock(in_dim, num_tasks, cfg.num_experts, cfg.expert_hidden, dropout, act, norm)
    if kind == "ple":
        return PLEBlock(in_dim, num_tasks, cfg, dropout, act, norm)
    raise ConfigError(f"unknown multi-task block {kind!r}; choose one of {', '.join(BLOCKS)}")
