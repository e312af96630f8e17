"""Helpers for tests of models: named activations and gradient paths (DESIGN §5.7).

A paper's stop-gradient ⊘ cuts an activation path while the same tensors still learn through
the main path (PEPNet's EPNet reads ⊘(E), yet the embeddings E learn from the task loss). A model
names the activations with :func:`mdmt.layers.tap` (or :func:`mdmt.layers.stop_gradient` with a
name); a test then asserts what gradient flows between two of them:

    >>> import torch
    >>> from torch import nn
    >>> from mdmt.layers import stop_gradient, tap
    >>> class Toy(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.gate = nn.Linear(2, 2)
    ...     def forward(self, e):
    ...         e = tap(e * 1.0, "E")
    ...         return tap(self.gate(stop_gradient(e)), "gate") * e
    >>> e = torch.randn(3, 2, requires_grad=True)
    >>> with record_activations() as acts:
    ...     out = Toy()(e)
    >>> float(path_gradient(acts["gate"], acts["E"]).abs().sum())
    0.0

:func:`assert_stop_gradient` runs a model on a batch and checks both sides: no gradient from
the target to the source, and (by default) a gradient from the logits to the source.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from . import layers

__all__ = ["record_activations", "path_gradient", "assert_stop_gradient"]


@contextmanager
def record_activations() -> Iterator[dict[str, Tensor]]:
    """Record every :func:`~mdmt.layers.tap` ped activation of the forward passes run inside:
    ``{name: tensor}`` (the last one of a name wins)."""
    acts: dict[str, Tensor] = {}
    layers._RECORDERS.append(acts)
    try:
        yield acts
    finally:
        layers._RECORDERS.remove(acts)


def path_gradient(target: Tensor, source: Tensor) -> Tensor:
    """``∂ Σ target / ∂ source`` through the recorded graph; zeros when ``target`` does not depend
    on ``source`` along any differentiable path (e.g. only through a stop-gradient)."""
    if not target.requires_grad:
        return torch.zeros_like(source)
    (grad,) = torch.autograd.grad(target.sum(), source, retain_graph=True, allow_unused=True)
    return torch.zeros_like(source) if grad is None else grad


def _model_output(out: Any) -> Tensor:
    logits = getattr(out, "logits", out)
    if isinstance(logits, dict):
        return torch.stack(list(logits.values()), dim=-1)
    return logits


def assert_stop_gradient(model: nn.Module, batch: Any, source: str, target: str, *, main_path: bool = True) -> None:
    """Assert a stop-gradient: no gradient flows from ``target`` back to ``source``.

    Args:
        model: the model (run on ``batch`` in training mode, as the gradient matters there).
        batch: its input.
        source: the name of a tapped activation (e.g. the embeddings ``E``).
        target: the name of a tapped activation, or a submodule path of ``model`` whose output
            is used (e.g. ``"epnet.gate"``).
        main_path: also assert that the model's logits do depend on ``source`` (the tensors
            still learn through the main path, as the papers' ⊘ intend).

    Raises:
        AssertionError: naming the path and the size of the gradient found.
    """
    hooked: dict[str, Tensor] = {}
    handle = None
    names = dict(model.named_modules())
    if target in names:
        handle = names[target].register_forward_hook(lambda m, i, o: hooked.__setitem__(target, o))
    try:
        model.train()
        with record_activations() as acts:
            out = _model_output(model(batch))
    finally:
        if handle is not None:
            handle.remove()
    if source not in acts:
        raise AssertionError(f"no activation tapped as {source!r}; tapped: {sorted(acts)}")
    tgt = hooked.get(target, acts.get(target))
    if tgt is None:
        raise AssertionError(f"{target!r} is neither a tapped activation nor a submodule; tapped: {sorted(acts)}")
    leak = path_gradient(tgt, acts[source]).abs().sum()
    assert float(leak) == 0.0, f"gradient flows from {target!r} back to {source!r} (|grad| = {float(leak):.3g})"
    if main_path:
        main = path_gradient(out, acts[source]).abs().sum()
        assert float(main) > 0.0, f"no gradient reaches {source!r} from the logits: the main path is cut too"
