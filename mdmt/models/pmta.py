"""PMTA: Perception-Aware Multi-Task Transformer Network (Zhang et al., CIKM 2025).

A plug-in head on any backbone ``H`` (§2.2). Each task ``t`` has a classifier ``C^t``; PMTA
takes the first-layer output ``C_1^t`` of every classifier, joins it with a task prompt, lets the
``T`` task tokens attend to each other, rescales every layer by the domain, and sends each task's
final token through the rest of its classifier::

    h          = H(e_u^g, e_u^d, e_v^g, e_v^d, e_o)                     # §2.1 backbone (+ a multi-task block)
    x^t_TPE    = ReLU([p^t ; e_u^t ; e_v^t] W_1^t + b_1^t)               # Eq. 1
    TPE^t      = x^t_TPE W_2^t + b_2^t                                   # Eq. 2
    m^t        = [TPE^t ; C_1^t(h)]                                      # Eq. 3   M = [m^1 .. m^T]: [B, T, w]
    X_1        = LN(M)                                                   # §2.4
    X^SA_i     = LN(MHA(X_i) + X_i)                                      # Eq. 4-5, 7a
    CTT_i(X_i) = LN(FFN(X^SA_i) + X^SA_i)                                # Eq. 6, 7b
    DAR_i      = 2·sigmoid(ReLU([e_u^d ; e_v^d] W_1 + b_1) W_2 + b_2)    # Eq. 8a-b, in (0, 2): [B, w]
    X_{i+1}    = CTT_i(X_i) ⊙ DAR_i                                      # Eq. 9, i = 1..L
    logit^t    = C^t_rest(X_{L+1}^t[-h1:])                               # output: rest of the classifier

Reading choices where the paper leaves room (docs/models.md, "PMTA"):

* ``w`` (``width``, default 256 as §3.1.3) is the token width: TPE outputs ``w − h1`` so that
  ``m^t = [TPE^t ; C_1^t]`` has width ``w`` with no extra projection (``X_1 = LN(M)``).
* The rest of ``C^t`` reads the last ``h1`` entries of the final token, the slot ``C_1^t`` had in
  ``m^t``; so ``C^t`` keeps its base-model shapes and warm-starts from a plain multi-task run (§2.4).
* "Per-layer scaling factors" (§2.5): every Transformer layer has its own DAR network.
* ``e_u^d, e_v^d`` are the embeddings from ``per_domain: true`` tables (user side, then item
  side). A schema without one gives DAR the embedding of the domain id instead (the run report
  says so).
* ``e_u^t, e_v^t`` are the features a task lists in ``TaskSpec.related_features``, read by meaning
  (``EmbeddingCollection.features``): id and sequence features by their embeddings (sequences
  mean-pooled), dense statistics through their learned projection. A task listing none gets
  ``TPE^t`` from ``p^t`` alone (the run report says so).

Table 2 ablations are switches: ``tpe: false`` (``m^t = C_1^t``), ``fusion: mlp`` (a 3-layer
MLP over the concatenated tokens instead of TMPN), ``dar: false``.

Example::

    >>> import torch
    >>> from mdmt.models import build_model
    >>> from mdmt.schema import *
    >>> from mdmt.featuremap import FeatureMap
    >>> from mdmt.batch import Batch
    >>> spec = DatasetSpec(name="t", features=[FeatureSpec(name="u", source="user"), FeatureSpec(name="i", source="item")],
    ...     domain=DomainSpec(column="dom", names=["a", "b"]), default_dim=4,
    ...     tasks=[TaskSpec(name="like", label="like", related_features=["i"]), TaskSpec(name="finish", label="finish")],
    ... ).with_domain_tables(["u", "i"])                      # e^g and e^d for users and items
    >>> fm = FeatureMap.layout_of(spec, vocabs={"u": ["1", "2"], "i": ["1", "2"]})
    >>> model = build_model("pmta", spec, fm, {"width": 32, "tower_hidden": [8]})
    >>> b = Batch.empty(num_sparse=2, num_dense=0, num_tasks=2, size=3)
    >>> {t: tuple(z.shape) for t, z in model(b).logits.items()}
    {'like': (3,), 'finish': (3,)}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field, PositiveInt
from torch import Tensor, nn

from ..batch import Batch
from ..embeddings import EmbeddingCollection
from ..layers import MLP, TransformerLayer
from ..schema import ConfigError, DatasetSpec
from .backbones import BackboneKind, build_backbone
from .base import MDMTModel, ModelOutput, OptimGroup, register
from .blocks import BlockConfig, BlockKind, build_block
from .compose import CompositionConfig
from .heads import build_head

__all__ = ["PMTAConfig", "PMTA", "PMTATrace", "DAR", "attention_weights"]


class PMTAConfig(CompositionConfig):
    """Config of ``pmta``: the fields of :class:`~mdmt.models.compose.CompositionConfig` (backbone
    ``H``, head, tower widths, dropout, act, norm), a multi-task block, and PMTA's own.

    Attributes:
        backbone, backbone_params: the network ``H`` (``none``, ``mlp``, ``dcnv2``, ``deepfm``).
        block, block_params: the multi-task block between ``H`` and the classifiers (``shared``,
            ``mmoe``, ``ple``); laid out as in ``sharedbottom`` / ``mmoe`` / ``ple``, whose runs
            warm-start PMTA (§2.4).
        head, head_params, tower_hidden: the classifiers ``C^t`` (a registered head; ``C_1^t`` is
            ``head.first``, of width ``h1``, usually ``tower_hidden[0]``).
        dropout, act, norm: of the backbone-side hidden layers (backbone, block, classifiers).
        prompt_dim: width of the learnable prompt ``p^t`` (Eq. 1).
        tpe_hidden: hidden width of the two-layer TPE network (Eq. 1-2).
        width: token width ``w`` of ``m^t`` (Eq. 3); TPE outputs ``w − h1``. §3.1.3: 256.
        num_layers: Transformer layers ``L`` (§2.4: 2).
        num_heads: attention heads (§3.1.3: 4); must divide the token width.
        ffn_dim: hidden width of the FFN (Eq. 6); None = ``w``.
        attn_dropout: dropout inside the Transformer layers.
        dar_bottleneck: DAR's ``k`` (Eq. 8; ``k < n`` and ``k < m``); None = ``min(n, m) // 2``.
        domain_dim: width of the learned domain embedding DAR reads when the schema has no
            user- or item-side ``per_domain`` table and the domain id is no input
            (``model.embedding.domain_input: false``); with it, DAR reads the domain id's embedding.
        tpe: Table 2 switch; False = "w/o TPE" (``m^t = C_1^t``).
        fusion: ``transformer`` (TMPN) or ``mlp`` (Table 2 "task fusion MLP": ``fusion_layers``
            layers over the concatenated tokens, each rescaled by its DAR).
        fusion_layers: layers of the fusion MLP (Table 2: 3).
        dar: Table 2 switch; False = "w/o DAR".
        tpe_init_scale: TPE's output layer starts scaled by this, so ``m^t`` starts close to
            ``[0 ; C_1^t]`` and the classifier's signal is not drowned by ``LN(M)``.
        head_lr: learning rate of PMTA's own parameters (prompts, TPE, TMPN, DAR; §3.1.3 trains
            with Adam at 1e-3); None = the trainer's ``lr``. The base model (embeddings, ``H``,
            block, ``C^t``) always uses the trainer's.
    """

    backbone: BackboneKind = "mlp"
    block: BlockKind = "shared"
    block_params: BlockConfig = BlockConfig()
    prompt_dim: PositiveInt = 16
    tpe_hidden: PositiveInt = 64
    width: PositiveInt = 256
    num_layers: PositiveInt = 2
    num_heads: PositiveInt = 4
    ffn_dim: PositiveInt | None = None
    attn_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    dar_bottleneck: PositiveInt | None = None
    domain_dim: PositiveInt = 16
    tpe: bool = True
    fusion: Literal["transformer", "mlp"] = "transformer"
    fusion_layers: PositiveInt = 3
    dar: bool = True
    tpe_init_scale: float = Field(default=0.01, gt=0.0)
    head_lr: float | None = Field(default=1e-3, gt=0.0)


class DAR(nn.Module):
    """Domain-Aware Rescaling (Eq. 8): a bottleneck ``n -> k -> m`` with output ``2·sigmoid(·)`` in (0, 2).

    Shapes: ``z`` ``[B, n]`` (``[e_u^d ; e_v^d]``) -> ``[B, m]``.

    Example::

        >>> import torch
        >>> s = DAR(8, 4, 16)(torch.randn(3, 8))
        >>> s.shape, bool(((s > 0) & (s < 2)).all())
        (torch.Size([3, 16]), True)
    """

    def __init__(self, n: int, k: int, m: int) -> None:
        super().__init__()
        self.down = nn.Linear(n, k)  # W_1^DAR, b_1^DAR
        self.up = nn.Linear(k, m)  # W_2^DAR, b_2^DAR
        # b_1 starts at 0: on the small initial embeddings a negative bias would leave its
        # bottleneck unit dead (ReLU, no gradient) from the first step
        nn.init.zeros_(self.down.bias)

    def forward(self, z: Tensor) -> Tensor:
        x = torch.relu(self.down(z))  # Eq. 8a: X^DAR = ReLU([e_u^d ; e_v^d] W_1 + b_1)
        return 2.0 * torch.sigmoid(self.up(x))  # Eq. 8b: DAR = 2·sigmoid(X^DAR W_2 + b_2)


def attention_weights(layer: TransformerLayer, x: Tensor) -> Tensor:
    """The self-attention weights of ``layer`` on its input ``x``: ``softmax(Q Kᵀ / sqrt(d_k))`` (Eq. 5).

    Shapes: ``x`` ``[B, T, w]`` -> ``[B, heads, T, T]`` (rows sum to one; query ``i`` attends to key ``j``).
    """
    attn = layer.attn
    q = attn._heads(attn.q_proj(x))  # [B, h, T, d_h]
    k = attn._heads(attn.k_proj(x))
    return torch.softmax(q @ k.transpose(-1, -2) / attn.head_dim**0.5, dim=-1)


@dataclass
class PMTATrace:
    """The intermediate tensors of one forward pass (for tests and ``mdmt analyze``).

    Attributes:
        c1: ``C_1^t(h)`` ``[B, T, h1]``.
        tpe: ``TPE^t`` ``[B, T, w − h1]``, or None without TPE.
        tokens: ``M`` ``[B, T, w]`` (Eq. 3).
        layer_inputs: ``X_i`` for ``i = 1..L`` (``X_1 = LN(M)``), each ``[B, T, w]``.
        layer_outputs: ``CTT_i(X_i) ⊙ DAR_i`` = ``X_{i+1}``, each ``[B, T, w]``.
        attention: per Transformer layer ``[B, heads, T, T]`` (empty with ``fusion: mlp``).
        dar: per layer ``[B, w]`` (empty without DAR).
        logits: ``[B, T]``.
    """

    c1: Tensor
    tpe: Tensor | None
    tokens: Tensor
    layer_inputs: list[Tensor]
    layer_outputs: list[Tensor]
    attention: list[Tensor]
    dar: list[Tensor]
    logits: Tensor


@register("pmta", paper="Zhang et al., CIKM 2025")
class PMTA(MDMTModel):
    """PMTA head (TPE + TMPN + MDAN) on a backbone ``H``, see the module docstring.

    Shapes: ``h`` ``[B, Hd]`` -> block ``[B, T, d]`` -> ``C_1`` ``[B, T, h1]``;
    TPE ``[B, T, w − h1]``; ``M`` ``[B, T, w]``; DAR ``[B, w]`` per layer; logits ``{t: [B]}``.
    """

    config_class = PMTAConfig

    def __init__(self, spec: DatasetSpec, embeddings: EmbeddingCollection, cfg: PMTAConfig) -> None:
        super().__init__(spec, embeddings)
        self.cfg = cfg
        T = self.num_tasks
        self._notes: list[str] = []

        # ---- H, the block and the classifiers C^t (as in sharedbottom / mmoe / ple, for the warm-up of §2.4)
        self.backbone = build_backbone(cfg.backbone, embeddings, cfg.backbone_params, cfg.norm)
        self.block = build_block(cfg.block, self.backbone.out_dim, T, cfg.block_params, cfg.dropout, cfg.act, cfg.norm)
        self.head = build_head(cfg.head, self.block.out_dim, T, cfg.towers(), cfg.head_params, embeddings)
        h1 = self.head.first_dim
        w = cfg.width if cfg.tpe else h1
        self.h1, self.w = h1, w
        where = "model 'pmta' params"
        if cfg.tpe and cfg.width <= h1:
            raise ConfigError(
                f"{where}: width ({cfg.width}) must exceed the width of the classifiers' first layer C_1 ({h1}, "
                "tower_hidden[0]): the task token is [TPE ; C_1] and TPE gets width - h1"
            )
        if cfg.fusion == "transformer" and w % cfg.num_heads:
            what = "width" if cfg.tpe else "the token width without TPE (C_1's, tower_hidden[0])"
            raise ConfigError(f"{where}: {what} ({w}) must be a multiple of num_heads ({cfg.num_heads})")

        # ---- inputs by meaning: related features (TPE) and domain-specific embeddings (DAR)
        side = {"user": 0, "item": 1, "context": 2}
        self._related: list[list[str]] = []  # per task: e_u^t's features, then e_v^t's
        widths = []
        for task in spec.tasks:
            feats = sorted(task.related_features, key=lambda f: side[spec.feature(f).source])  # user side first
            self._related.append(feats)
            widths.append(cfg.prompt_dim + (embeddings.use(feats) if feats and cfg.tpe else 0))
            if cfg.tpe and not feats:
                self._notes.append(f"PMTA: task {task.name!r} declares no related_features; its TPE sees the prompt p^t alone")
        # e_u^d then e_v^d: the user- and item-side keys of per-domain tables
        self._domain_keys = embeddings.group_keys("user", per_domain=True) + embeddings.group_keys("item", per_domain=True)

        # ---- TPE (Eq. 1-2): a prompt p^t and a two-layer network per task
        if cfg.tpe:
            # p^t starts at the scale of the embeddings (std 0.01) and b_1^t at 0, so that which TPE
            # units are active varies from row to row with e_u^t, e_v^t (a unit set by a constant
            # prompt or bias alone would be on, or dead, for every row)
            self.prompts = nn.Parameter(torch.randn(T, cfg.prompt_dim) * 0.01)  # p^t
            self.tpe = nn.ModuleList([MLP(n, [cfg.tpe_hidden], out_dim=w - h1) for n in widths])
            with torch.no_grad():  # TPE starts near zero, so m^t starts as C_1^t (see the docstring)
                for net in self.tpe:
                    net[0].bias.zero_()
                    net[-1].weight.mul_(cfg.tpe_init_scale)
                    net[-1].bias.mul_(cfg.tpe_init_scale)

        # ---- TMPN (Eq. 4-7) or the Table 2 fusion MLP
        self.norm_in = nn.LayerNorm(w)  # X_1 = LN(M)
        if cfg.fusion == "transformer":
            self.layers = nn.ModuleList(
                [TransformerLayer(w, cfg.num_heads, cfg.ffn_dim or w, cfg.attn_dropout) for _ in range(cfg.num_layers)]
            )
            num_scaled = cfg.num_layers
        else:
            self.fusion = nn.ModuleList([nn.Linear(T * w, T * w) for _ in range(cfg.fusion_layers)])
            num_scaled = cfg.fusion_layers

        # ---- MDAN (Eq. 8-9): one DAR per layer
        if cfg.dar:
            if not self._domain_keys and embeddings.domain_key is not None:
                self._domain_keys = [embeddings.domain_key]  # the domain id's own embedding
                self._notes.append(
                    "PMTA: the schema declares no user- or item-side per_domain table (e^d); DAR reads the "
                    "embedding of the domain id (model.embedding.domain_input)"
                )
            if self._domain_keys:
                n = sum(embeddings.dims[k] for k in self._domain_keys)
            else:
                self.domain_embedding = nn.Embedding(self.num_domains, cfg.domain_dim)
                n = cfg.domain_dim
                self._notes.append(
                    "PMTA: the schema declares no user- or item-side per_domain table (e^d) and the domain id is "
                    "no input; DAR reads a learned domain embedding of its own"
                )
            k = cfg.dar_bottleneck or min(n, w) // 2
            if not (k < n and k < w) or k < 1:
                raise ConfigError(
                    f"model 'pmta' params: dar_bottleneck k={k} must satisfy 0 < k < n={n} (the width of "
                    f"[e_u^d ; e_v^d]) and k < m={w} (the token width), Eq. 8"
                )
            self.dar = nn.ModuleList([DAR(n, k, w) for _ in range(num_scaled)])

    # ------------------------------------------------------------------------------------------
    def pmta_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """PMTA's own parameters (prompts, TPE, TMPN or fusion MLP, DAR), i.e. everything but the
        embeddings, ``H``, the multi-task block and the classifiers ``C^t``."""
        base = ("embeddings.", "backbone.", "block.", "head.")
        return [(n, p) for n, p in self.named_parameters() if not n.startswith(base)]

    def optim_groups(self) -> list[OptimGroup]:
        """Two Adam groups: the base model at the trainer's learning rate, PMTA's head at ``head_lr``."""
        head = {id(p) for _, p in self.pmta_parameters()}
        main = [p for p in self.parameters() if p.requires_grad and id(p) not in head]
        own = [p for _, p in self.pmta_parameters() if p.requires_grad]
        return [OptimGroup("main", main), OptimGroup("pmta_head", own, lr=self.cfg.head_lr)]

    def report_notes(self) -> list[str]:
        return list(self._notes)

    def _tpe(self, batch: Batch, pooled: dict[str, Tensor]) -> Tensor:
        """Eq. 1-2 for every task: ``[B, T, w − h1]``."""
        B = batch.domain.shape[0]
        out = []
        for t, feats in enumerate(self._related):
            parts = [self.prompts[t].expand(B, -1)]  # p^t
            if feats:
                parts.append(self.embeddings.features(batch, feats, pooled))  # [e_u^t ; e_v^t]
            out.append(self.tpe[t](torch.cat(parts, dim=-1)))  # Eq. 1-2: ReLU([p^t ; e_u^t ; e_v^t] W_1 + b_1) W_2 + b_2
        return torch.stack(out, dim=1)

    def _dar_input(self, batch: Batch, pooled: dict[str, Tensor]) -> Tensor:
        """``[e_u^d ; e_v^d]`` ``[B, n]`` (or the learned domain embedding)."""
        if self._domain_keys:
            return torch.cat([pooled[k] for k in self._domain_keys], dim=-1)
        return self.domain_embedding(batch.domain)

    def _run(self, batch: Batch, trace: bool) -> tuple[Tensor, PMTATrace | None]:
        cfg = self.cfg
        pooled = self.embeddings.pooled(batch)  # one lookup for every view
        h = self.backbone.embed(batch, self.embeddings, pooled)  # H(e_u^g, e_u^d, e_v^g, e_v^d, e_o): [B, Hd]
        z = self.block(h, batch.domain)  # one representation per task: [B, T, d]
        gate = self.head.gate_input(self.embeddings, batch, pooled)
        c1 = self.head.first(z, gate)  # C_1^t(H(...)): [B, T, h1]
        tpe = self._tpe(batch, pooled) if cfg.tpe else None  # H_TPE^t: [B, T, w - h1]
        m = c1 if tpe is None else torch.cat([tpe, c1], dim=-1)  # Eq. 3: m^t = [TPE^t ; C_1^t]: [B, T, w]
        scales = [d(self._dar_input(batch, pooled)).unsqueeze(1) for d in self.dar] if cfg.dar else []  # Eq. 8: [B, 1, w]
        x = self.norm_in(m)  # X_1 = LN(M)
        inputs, outputs, attn = [], [], []
        if cfg.fusion == "transformer":
            for i, layer in enumerate(self.layers):
                inputs.append(x)
                if trace:
                    attn.append(attention_weights(layer, x))
                x = layer(x)  # Eq. 4-7: CTT_i(X_i), post-LN
                if scales:
                    x = x * scales[i]  # Eq. 9: CTT_i(X_i) ⊙ DAR(e_u^d, e_v^d)
                outputs.append(x)
        else:  # Table 2: task fusion by an MLP over the concatenated tokens
            B, T, w = x.shape
            for i, lin in enumerate(self.fusion):
                inputs.append(x)
                x = lin(x.reshape(B, T * w)).view(B, T, w)
                if i < len(self.fusion) - 1:
                    x = torch.relu(x)
                if scales:
                    x = x * scales[i]  # DAR rescales every fusion layer as it does every CTT layer
                outputs.append(x)
        z = self.head.rest(x[..., -self.h1 :], gate)  # rest of C^t on the C_1 slot of the final token: [B, T]
        if not trace:
            return z, None
        return z, PMTATrace(c1, tpe, m, inputs, outputs, attn, [s.squeeze(1) for s in scales], z)

    def forward(self, batch: Batch) -> ModelOutput:
        z, _ = self._run(batch, trace=False)
        return self.output(z)

    @torch.no_grad()
    def trace(self, batch: Batch) -> PMTATrace:
        """Every intermediate tensor of the forward pass (see :class:`PMTATrace`)."""
        return self._run(batch, trace=True)[1]  # type: ignore[return-value]

    def prompt_norms(self) -> dict[str, float]:
        """``‖p^t‖₂`` per task (empty without TPE)."""
        if not self.cfg.tpe:
            return {}
        return {t: float(n) for t, n in zip(self.task_names, self.prompts.detach().norm(dim=-1))}
