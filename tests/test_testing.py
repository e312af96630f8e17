"""The gradient-path helpers the model tests use for the papers' stop-gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mdmt.layers import stop_gradient, tap
from mdmt.testing import assert_stop_gradient, path_gradient, record_activations


class _Gated(nn.Module):
    """out = gate(⊘(e)) ⊙ e: the gate reads a stop-gradient copy of e, the main path e itself."""

    def __init__(self, cut: bool = True, main: bool = True) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.gate = nn.Linear(3, 3)
        self.cut, self.main = cut, main

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = tap(self.lin(x), "E")
        g = self.gate(stop_gradient(e, "E_in_gate") if self.cut else e)
        return torch.sigmoid(g) * (e if self.main else e.detach())


def test_tap_records_only_inside_a_recording():
    x = torch.randn(2, 3)
    with record_activations() as acts:
        _Gated()(x)
    assert set(acts) == {"E", "E_in_gate", "E_in_gate/stopped"}
    assert not acts["E_in_gate/stopped"].requires_grad and acts["E"].requires_grad
    with record_activations() as outer:
        with record_activations() as inner:
            _Gated()(x)
        assert set(inner) == {"E", "E_in_gate", "E_in_gate/stopped"} and outer == {}


def test_stop_gradient_passes_a_cut_path_and_fails_an_open_one():
    x = torch.randn(4, 3)
    assert_stop_gradient(_Gated(cut=True), x, source="E", target="gate")
    with pytest.raises(AssertionError, match="gradient flows from 'gate' back to 'E'"):
        assert_stop_gradient(_Gated(cut=False), x, source="E", target="gate")
    with pytest.raises(AssertionError, match="main path is cut too"):
        assert_stop_gradient(_Gated(cut=True, main=False), x, source="E", target="gate")
    with pytest.raises(AssertionError, match="no activation tapped as 'X'"):
        assert_stop_gradient(_Gated(), x, source="X", target="gate")


def test_path_gradient_matches_autograd():
    x = torch.randn(4, 3)
    m = _Gated(cut=False)
    with record_activations() as acts:
        m(x)
    e = acts["E"]
    g = path_gradient(m.gate(e), e)  # d Σ (e Wᵀ + b) / de = column sums of W
    assert torch.allclose(g, m.gate.weight.sum(0).expand_as(e), atol=1e-6)
