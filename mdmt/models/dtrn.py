"""DTRN: Deep Task-specific Representation Network (Liu et al., CIKM 2023).

DTRN gives every task its own bottom representation. The Task-specific Interest Module (TIM)
reads each behaviour sequence once per task with one shared Conditional Transformer whose layer
norms are modulated by a hypernetwork of the task and the sequence type; the Task-specific
Representation Refinement Module (TRM) rescales the context of each task with a SENet-like
network; a multi-task model then reads the ``T`` task-specific representations (§3.5).

With ``T_t = E_T[t]`` the task type embedding, ``BS_b = E_B[b]`` the sequence type embedding,
``X_b`` ``[L_b, d]`` the embeddings of behaviour sequence ``b`` and ``e_item`` the target item's::

    γ^l_{t,b} = MLP_{θ_γ^l}(T_t, BS_b),  β^l_{t,b} = MLP_{θ_β^l}(T_t, BS_b)          # Eq. 2 (l = 1..4)
    MHSA(X)   = concat(head_1, ..., head_h) W^O                                     # Eq. 3
    head_i    = softmax(X W_i^Q (X W_i^K)ᵀ / √d') X W_i^V                           # Eq. 4
    FFN(X)    = ReLU(X W_1 + b_1) W_2 + b_2                                         # Eq. 5
    CLN^l_{t,b}(X) = γ^l_{t,b} · γ^l · (X − μ) / δ + β^l_{t,b} + β^l                # Eq. 6
    out^0     = CLN^1_{t,b}(X_b + MHSA(X_b))                                        # Eq. 7: encoder
    out^enc   = CLN^2_{t,b}(out^0 + FFN(out^0))
    out^3     = CLN^3_{t,b}(e_item + MHA(e_item, out^enc))                          #        decoder
    out^dec   = CLN^4_{t,b}(out^3 + FFN'(out^3))
    interest_t = concat(out^dec_{t,1}, ..., out^dec_{t,M})                          # Eq. 8
    raw_t     = [e_1^s, ..., e_N^s, interest_t]
    r_t       = raw_t ⊙ refine_t,  refine_t = sigmoid(MLP_t(raw_t))                 # Eq. 9: TRM
    [o_1, ..., o_T] = MTL_model(r_1, ..., r_T)                                      # Eq. 10
    L         = Σ_t BCE(σ(o_t), y_t)                                                # Eq. 11 (the trainer's loss)

``MTL_model`` (``mtl``) is MMoE (the paper's choice on Tenrec: ``E`` shared experts, each task's
gate and experts reading that task's ``r_t``) or ``shared`` (each task's tower reads its ``r_t``
directly), followed by the task towers (a registered head).

Mapping to this library's inputs:

- the sequences are every sequence feature of the schema, each of its tables one type ``b``
  (``M`` types); the target item of sequence ``b`` is the sparse feature it takes its ids from
  (its ``vocab``), looked up in the same table. Every sequence table must have one width ``d``.
- ``e_1^s, ..., e_N^s`` are the embeddings of every sparse feature, the domain id when it is an
  input (``model.embedding.domain_input``) and the dense features: the flat input without the
  sequences (which the task-specific interests replace).
- The paper's Transformer has no position encoding (Eq. 3-7); none is added. Padded positions
  are never attended to; an empty sequence gives the decoder a zero context.
- The paper does not say how the hypernetworks start. Here the scale hypernetworks start at
  ``γ_{t,b} = 1`` and the shift ones at ``β_{t,b} = 0`` (their last layer's weights start small),
  so CLN starts as the plain layer norm and the conditions grow from there.
- A schema without sequences has no TIM: ``raw_t`` is the context alone, and the report says so.
- Not built: §5.2.2's other injection points (QKV, FFN-1, FFN-2; CLN is the paper's choice) and
  §5.2.3's PLE and AITM as ``MTL_model``.

Composition: TIM (Eq. 2-8) and TRM (Eq. 9) -> ``mtl`` over the ``T`` representations (Eq. 10)
-> head (plain towers by default).

Example::

    model = build_model("dtrn", spec, feature_map, {"num_heads": 2, "mtl": "mmoe"})
    logits = model(batch).logits          # {task: [B]}
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import Tensor, nn

from ..batch import Batch
from ..embeddings import EmbeddingCollection
from ..layers import MLP, MultiHeadAttention, MultiHeadSelfAttention, ParallelMLP
from ..schema import ConfigError, DatasetSpec
from .base import MDMTModel, ModelOutput, register
from .blocks import BlockConfig, build_block
from .compose import HeadedConfig
from .heads import build_head

__all__ = ["DTRNConfig", "DTRN", "ConditionalLayerNorm", "ConditionalTransformer"]

NUM_CLN = 4  # the layer norms of Eq. 7: encoder attention, encoder FFN, decoder attention, decoder FFN


class DTRNConfig(HeadedConfig):
    """Config of ``dtrn``: the fields of :class:`~mdmt.models.compose.HeadedConfig` (head, tower
    widths, dropout, act, norm of the towers and experts), plus:

    Attributes:
        num_heads: attention heads ``h`` of the Conditional Transformer (Eq. 3-4); must divide
            the sequences' embedding width ``d``.
        ffn_dim: hidden width ``d_f`` of the FFNs (Eq. 5); None = ``4·d``.
        hyper_hidden: hidden width of each two-layer hypernetwork (Eq. 2).
        type_dim: width of the task and sequence type embeddings ``T_t``, ``BS_b``; None = ``d``.
        refine_hidden: hidden width of each task's SENet-like refinement MLP (Eq. 9).
        attn_dropout: dropout on the attention weights and sublayer outputs.
        mtl: the multi-task model of Eq. 10: ``mmoe`` (§4.4 on Tenrec) or ``shared`` (each
            task's tower reads its own ``r_t``).
        num_experts, expert_hidden: MMoE's experts (``mtl: mmoe``).
        tim: False = no sequence interests at all (``raw_t`` is the context alone).
        trm: False = no refinement (``r_t = raw_t``): Table 5's "+TIM".
        conditional: False = the layer norms are not conditioned (``γ_{t,b} = 1``,
            ``β_{t,b} = 0``): one interest per sequence, shared by the tasks. With TRM this is
            Table 5's "+TRM" (a task-shared interest, refined per task); with ``trm: false`` too,
            a task-shared bottom like the DMT baseline's.
        hyper_init_scale: the hypernetworks' last layer starts scaled by this (see the module
            docstring: CLN starts as the plain layer norm).
    """

    num_heads: PositiveInt = 2
    ffn_dim: PositiveInt | None = None
    hyper_hidden: PositiveInt = 32
    type_dim: PositiveInt | None = None
    refine_hidden: PositiveInt = 64
    attn_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    mtl: Literal["mmoe", "shared"] = "mmoe"
    num_experts: PositiveInt = 4
    expert_hidden: list[PositiveInt] = Field(default_factory=lambda: [64], min_length=1)
    tim: bool = True
    trm: bool = True
    conditional: bool = True
    hyper_init_scale: float = Field(default=0.01, gt=0.0)


class ConditionalLayerNorm(nn.Module):
    """Conditional layer normalisation (Eq. 6) for every (task, sequence type) pair at once.

    ``CLN_{t,b}(X) = γ_{t,b} · γ · (X − μ) / δ + β_{t,b} + β`` with ``γ``, ``β`` the layer norm's
    own parameters and ``γ_{t,b}``, ``β_{t,b}`` given by the hypernetworks.

    Shapes: ``x`` ``[B, T, ..., d]`` (or ``[B, 1, ..., d]``, broadcast to the ``T`` tasks), ``gamma``
    and ``beta`` ``[T, d]`` -> ``[B, T, ..., d]``.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))  # γ^l
        self.bias = nn.Parameter(torch.zeros(dim))  # β^l
        self.eps = eps

    def forward(self, x: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
        n = F.layer_norm(x, x.shape[-1:], eps=self.eps)  # (X − μ) / δ
        shape = (1, gamma.shape[0]) + (1,) * (x.dim() - 3) + (gamma.shape[-1],)
        g, b = gamma.reshape(shape), beta.reshape(shape)
        return g * self.weight * n + b + self.bias  # Eq. 6


class ConditionalTransformer(nn.Module):
    """The base Transformer of TIM (Eq. 3-7): one encoder and one decoder layer, shared by every
    (task, sequence type) pair, whose four layer norms are conditional (:class:`ConditionalLayerNorm`).

    Shapes (``forward``): ``x`` ``[B, L, d]`` (one sequence type), ``mask`` ``[B, L]`` bool
    (True = a real position), ``target`` ``[B, d]`` (the target item), ``gamma``, ``beta``
    ``[4, T, d]`` (this sequence type's conditions for the ``T`` tasks) -> ``out^dec`` ``[B, T, d]``.
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.self_attn = MultiHeadSelfAttention(dim, num_heads, dropout=dropout)  # MHSA, Eq. 3-4
        self.cross_attn = MultiHeadAttention(dim, num_heads, dropout=dropout)  # MHA, target item as query
        self.enc_ffn = MLP(dim, [ffn_dim], out_dim=dim)  # FFN, Eq. 5
        self.dec_ffn = MLP(dim, [ffn_dim], out_dim=dim)
        self.norms = nn.ModuleList([ConditionalLayerNorm(dim) for _ in range(NUM_CLN)])
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor, mask: Tensor, target: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
        B, L, d = x.shape
        T = gamma.shape[1]
        cln = self.norms
        # the attention of the encoder does not depend on the task: computed once, then conditioned
        a = (x + self.dropout(self.self_attn(x, mask))).unsqueeze(1)  # X + MHSA(X): [B, 1, L, d]
        out0 = cln[0](a, gamma[0], beta[0])  # out^0 = CLN(X + MHSA(X)): [B, T, L, d]
        enc = cln[1](out0 + self.dropout(self.enc_ffn(out0)), gamma[1], beta[1])  # out^enc: [B, T, L, d]
        q = target.unsqueeze(1).expand(B, T, d).reshape(B * T, 1, d)  # e_item, once per task
        keys_mask = mask.unsqueeze(1).expand(B, T, L).reshape(B * T, L)
        ctx = self.cross_attn(q, enc.reshape(B * T, L, d), key_mask=keys_mask).view(B, T, d)  # MHA(e_item, out^enc)
        out3 = cln[2](target.unsqueeze(1) + self.dropout(ctx), gamma[2], beta[2])  # out^3: [B, T, d]
        return cln[3](out3 + self.dropout(self.dec_ffn(out3)), gamma[3], beta[3])  # out^dec: [B, T, d]


@register("dtrn", paper="Liu et al., CIKM 2023", description="task-specific interests (TIM) and refined bottoms (TRM)")
class DTRN(MDMTModel):
    """Deep Task-specific Representation Network.

    Shapes: context ``[B, C]``; per sequence type ``b``: ``[B, L_b, d]`` -> ``out^dec`` ``[B, T, d]``;
    interests ``[B, T, M·d]``; ``raw``, ``r`` ``[B, T, C + M·d]``; MMoE ``[B, T, He]``; logits ``{t: [B]}``.
    """

    config_class = DTRNConfig
    domain_aware: ClassVar[bool] = False

    def __init__(self, spec: DatasetSpec, embeddings: EmbeddingCollection, cfg: DTRNConfig) -> None:
        super().__init__(spec, embeddings)
        self.cfg = cfg
        T = self.num_tasks
        self._notes: list[str] = []

        # ---- the sequence types b and their target items
        self._seq: list[tuple[str, str, str]] = []  # (sequence key, its feature, the target item's key)
        if cfg.tim:
            for key in embeddings.sequence_keys:
                feat, table = key.split("@", 1)
                vocab = spec.feature(feat).vocab
                target = f"{vocab}@{table}" if vocab else None
                if target not in embeddings.sparse_keys:
                    raise ConfigError(
                        f"model 'dtrn': sequence feature {feat!r} (table {table!r}) takes no ids of a sparse "
                        "feature in the same table; DTRN's decoder queries it with the target item (Eq. 7): "
                        f"declare `vocab: <the item feature>` for {feat!r}, or set `tim: false`"
                    )
                self._seq.append((key, feat, target))
            if not self._seq:
                self._notes.append("DTRN: the schema declares no behaviour sequence; TIM is off and raw_t is the context")
        M = len(self._seq)
        d = 0
        if M:
            widths = {embeddings.dims[k] for k, _, _ in self._seq}
            if len(widths) != 1:
                raise ConfigError(
                    f"model 'dtrn': the behaviour sequences' tables have widths {sorted(widths)}; the shared "
                    "Conditional Transformer needs one width d (give their tables one dim)"
                )
            d = widths.pop()
            if d % cfg.num_heads:
                raise ConfigError(f"model 'dtrn' params: num_heads ({cfg.num_heads}) must divide the sequences' width d ({d})")
            k = cfg.type_dim or d
            # ---- task and sequence type embeddings (§3.2), hypernetworks (Eq. 2)
            self.task_types = nn.Parameter(torch.randn(T, k) * 0.1)  # E_T
            self.seq_types = nn.Parameter(torch.randn(M, k) * 0.1)  # E_B
            self.hyper_gamma = ParallelMLP(2 * k, [cfg.hyper_hidden], NUM_CLN, out_dim=d)  # θ_γ^l, l = 1..4
            self.hyper_beta = ParallelMLP(2 * k, [cfg.hyper_hidden], NUM_CLN, out_dim=d)  # θ_β^l
            with torch.no_grad():  # γ_{t,b} starts at 1 and β_{t,b} at 0: CLN starts as the plain LN
                for net, start in ((self.hyper_gamma, 1.0), (self.hyper_beta, 0.0)):
                    net.weights[-1].mul_(cfg.hyper_init_scale)
                    net.biases[-1].fill_(start)
            self.transformer = ConditionalTransformer(d, cfg.num_heads, cfg.ffn_dim or 4 * d, cfg.attn_dropout)
        self.seq_dim = d

        # ---- TRM (Eq. 9): one SENet-like MLP per task over raw_t
        self._context_keys = list(embeddings.sparse_keys) + ([embeddings.domain_key] if embeddings.domain_key else [])
        ctx = sum(embeddings.dims[k] for k in self._context_keys) + embeddings.num_dense
        raw = ctx + M * d
        self.raw_dim = raw
        if cfg.trm:
            self.refine = ParallelMLP(raw, [cfg.refine_hidden], T, out_dim=raw)  # MLP_t, sigmoid outside

        # ---- the multi-task model (Eq. 10): a block over the T task-specific inputs, then the towers
        block_cfg = BlockConfig(num_experts=cfg.num_experts, expert_hidden=cfg.expert_hidden)
        self.block = build_block(cfg.mtl, raw, T, block_cfg, cfg.dropout, cfg.act, cfg.norm)
        self.head = build_head(cfg.head, self.block.out_dim, T, cfg.towers(), cfg.head_params, embeddings)

    def report_notes(self) -> list[str]:
        return list(self._notes)

    # ------------------------------------------------------------------------------------------
    def conditions(self) -> tuple[Tensor, Tensor]:
        """Eq. 2 for every (layer norm, task, sequence type): ``γ``, ``β`` ``[4, T, M, d]``."""
        T, M = self.task_types.shape[0], self.seq_types.shape[0]
        if not self.cfg.conditional:
            ones = self.task_types.new_ones(NUM_CLN, T, M, self.seq_dim)
            return ones, torch.zeros_like(ones)
        pair = torch.cat(  # [T_t ; BS_b] for every pair: [T·M, 2k]
            [self.task_types.unsqueeze(1).expand(T, M, -1), self.seq_types.unsqueeze(0).expand(T, M, -1)], dim=-1
        ).reshape(T * M, -1)
        gamma = self.hyper_gamma(pair).permute(1, 0, 2).reshape(NUM_CLN, T, M, -1)  # γ^l_{t,b}
        beta = self.hyper_beta(pair).permute(1, 0, 2).reshape(NUM_CLN, T, M, -1)  # β^l_{t,b}
        return gamma, beta

    def interests(self, batch: Batch, emb: dict[str, Tensor]) -> Tensor:
        """TIM (Eq. 2-8): the task-specific interests ``[B, T, M·d]``."""
        gamma, beta = self.conditions()
        outs = []
        for b, (key, feat, target) in enumerate(self._seq):
            x = emb[key]  # X = e_b: [B, L, d] (zero at padding)
            mask = torch.arange(x.shape[1], device=x.device) < batch.seq_lengths[feat].unsqueeze(1)  # [B, L]
            outs.append(self.transformer(x, mask, emb[target], gamma[:, :, b], beta[:, :, b]))  # out^dec_{t,b}: [B, T, d]
        return torch.cat(outs, dim=-1)  # Eq. 8: interest_t = concat_b out^dec_{t,b}

    def representations(self, batch: Batch, emb: dict[str, Tensor] | None = None) -> Tensor:
        """TIM and TRM: the task-specific bottom representations ``r_t`` ``[B, T, C + M·d]`` (Eq. 9).

        ``emb``: the embeddings of the batch (:class:`EmbeddingCollection` ``forward``), looked up here if None."""
        emb = self.embeddings(batch) if emb is None else emb
        parts = [emb[k] for k in self._context_keys]
        if self.embeddings.num_dense:
            parts.append(batch.dense)
        context = torch.cat(parts, dim=-1)  # [e_1^s, ..., e_N^s]: [B, C]
        T = self.num_tasks
        raw = context.unsqueeze(1).expand(-1, T, -1)
        if self._seq:
            raw = torch.cat([raw, self.interests(batch, emb)], dim=-1)  # raw_t: [B, T, C + M·d]
        if not self.cfg.trm:
            return raw
        return raw * torch.sigmoid(self.refine(raw))  # Eq. 9: r_t = raw_t ⊙ sigmoid(MLP_t(raw_t))

    def forward(self, batch: Batch) -> ModelOutput:
        emb = self.embeddings(batch)  # one lookup (one id-dropout draw) for every view
        r = self.representations(batch, emb)  # [B, T, D]
        # Eq. 10: MMoE (task t's gate mixes the experts applied to its own r_t: [B, T, He]) or shared (r_t itself)
        z = self.block(r, batch.domain)
        gate = self.head.gate_input(self.embeddings, batch, self.embeddings.pooled(batch, emb))
        return self.output(self.head(z, gate))
