"""Model interface and registry (DESIGN §2, §5.1, §5.4).

A model is an ``nn.Module`` built as ``Model(spec, embeddings, cfg)``: the schema, its
:class:`~mdmt.embeddings.EmbeddingCollection` and a typed config. ``forward(batch)`` returns a
:class:`ModelOutput` with one logit vector per named task. Models never apply the sigmoid or the
loss, and take no device, optimizer or path. A model that needs several optimizers (PEPNet's
Adagrad for embeddings, M3oE's architecture weights stepped on validation batches) says so in
:meth:`MDMTModel.optim_groups`; the trainer never asks which model it holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal

from torch import Tensor, nn

from ..batch import Batch
from ..embeddings import EmbeddingCollection, EmbeddingConfig
from ..featuremap import FeatureMap
from ..schema import ConfigError, DatasetSpec, StrictModel, parse_config

__all__ = [
    "ModelOutput",
    "OptimGroup",
    "MDMTModel",
    "ModelInfo",
    "REGISTRY",
    "register",
    "build_model",
    "model_config",
]


@dataclass
class ModelOutput:
    """``logits``: ``{task: [B]}`` raw scores; ``aux_loss``: a scalar added to the task loss, or None."""

    logits: dict[str, Tensor]
    aux_loss: Tensor | None = None


@dataclass
class OptimGroup:
    """A set of parameters with its own optimizer.

    ``step_on="train"`` groups are stepped on training batches with the task loss; ``"valid"``
    groups (e.g. M3oE's architecture weights α, β) are stepped on their own validation batches and
    are never updated by the main optimizer.

    ``optimizer``, ``lr`` and ``weight_decay`` left at ``None`` inherit ``train.optimizer``,
    ``train.lr`` and ``train.weight_decay``; a value set here is used as given, whatever the
    group's name (an explicit ``weight_decay=0.0`` means no decay, an explicit ``"adam"`` means Adam).
    """

    name: str
    params: list[nn.Parameter]
    optimizer: Literal["adam", "adamw", "adagrad", "sgd"] | None = None
    lr: float | None = None
    weight_decay: float | None = None
    step_on: Literal["train", "valid"] = "train"


class MDMTModel(nn.Module):
    """Base class: holds the schema facts every model needs and the default single optimizer group."""

    config_class: ClassVar[type[StrictModel]]
    registry_name: ClassVar[str] = ""
    #: embedding settings the model itself needs, over the experiment's (e.g. SpecificAll's
    #: ``{"per_domain": True}``); applied by :func:`build_model`
    embedding_overrides: ClassVar[dict[str, Any]] = {}

    def __init__(self, spec: DatasetSpec, embeddings: EmbeddingCollection) -> None:
        super().__init__()
        self.task_names = spec.task_names
        self.num_tasks = spec.num_tasks
        self.num_domains = spec.num_domains
        self.embeddings = embeddings

    def forward(self, batch: Batch) -> ModelOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def output(self, logits: Tensor, aux_loss: Tensor | None = None) -> ModelOutput:
        """``[B, T]`` logits in schema task order -> :class:`ModelOutput` keyed by task name."""
        return ModelOutput({name: logits[:, t] for t, name in enumerate(self.task_names)}, aux_loss)

    def optim_groups(self) -> list[OptimGroup]:
        """Default: every parameter in one group with the trainer's optimizer, lr and weight decay."""
        return [OptimGroup("main", [p for p in self.parameters() if p.requires_grad])]

    def report_notes(self) -> list[str]:
        """Facts about how this model was built from the schema that the run report should state."""
        return []

    @classmethod
    def has_arch_weights(cls, cfg: StrictModel) -> bool:
        """Whether a model built from ``cfg`` returns a ``step_on="valid"`` group (architecture
        weights stepped on held-out training rows). Lets a run check its settings before loading
        data; default False."""
        return False

    def report_values(self) -> dict[str, float]:
        """Named scalars worth recording with a run's metrics (e.g. M3oE's learned α, β).

        The trainer logs them every epoch and the run writes them into ``metrics.json`` and
        ``report.md``; default: none."""
        return {}

    def stop_gradient_params(self) -> list[str]:
        """Names of parameters the task loss must leave without gradient (paper's stop-gradient)."""
        return []


@dataclass
class ModelInfo:
    name: str
    cls: type[MDMTModel]
    paper: str
    description: str = ""
    tags: list[str] = field(default_factory=list)


REGISTRY: dict[str, ModelInfo] = {}


def register(name: str, paper: str, description: str = "") -> Callable[[type[MDMTModel]], type[MDMTModel]]:
    """Class decorator: ``@register("mmoe", paper="Ma et al., KDD'18")``. Names are lower-case."""
    if name != name.lower():
        raise ValueError(f"registry names are lower-case, got {name!r}")

    def deco(cls: type[MDMTModel]) -> type[MDMTModel]:
        if name in REGISTRY and REGISTRY[name].cls is not cls:
            raise ValueError(f"model name {name!r} is already registered")
        cls.registry_name = name
        REGISTRY[name] = ModelInfo(name, cls, paper, description or (cls.__doc__ or "").strip().split("\n")[0])
        return cls

    return deco


def model_config(name: str, params: dict[str, Any] | None = None) -> StrictModel:
    """Validate ``params`` against the registered model's config (unknown keys raise)."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown model {name!r}; registered: {', '.join(sorted(REGISTRY))}")
    return parse_config(params or {}, REGISTRY[name].cls.config_class, f"model '{name}' params")


def build_model(
    name: str,
    spec: DatasetSpec,
    feature_map: FeatureMap,
    params: dict[str, Any] | None = None,
    embedding_init_std: float = 0.01,
    embedding: EmbeddingConfig | dict[str, Any] | None = None,
) -> MDMTModel:
    """Build a registered model with fresh embeddings. Never shares modules across calls.

    Args:
        name: registered model name.
        spec, feature_map: the schema and its fitted feature map.
        params: the model's params (validated by its config class; unknown keys raise).
        embedding_init_std: std of the embedding initialisation.
        embedding: the embedding settings (``model.embedding``: dim, domain input, id dropout),
            an :class:`~mdmt.embeddings.EmbeddingConfig` or its mapping; None = the defaults.
    """
    cfg = model_config(name, params)
    if not isinstance(embedding, EmbeddingConfig):
        embedding = parse_config(embedding or {}, EmbeddingConfig, "model.embedding")
    if REGISTRY[name].cls.embedding_overrides:
        embedding = embedding.model_copy(update=REGISTRY[name].cls.embedding_overrides)
    emb = EmbeddingCollection(spec, feature_map, init_std=embedding_init_std, cfg=embedding)
    return REGISTRY[name].cls(spec, emb, cfg)
