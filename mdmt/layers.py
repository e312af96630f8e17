"""Generic layers shared by models: MLP, experts, gates, towers, cross and FM layers.

Only generic building blocks live here (DESIGN §5.5); anything specific to one paper stays in
that paper's model file.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["MLP", "activation"]


def activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "prelu": nn.PReLU}[name]()


class MLP(nn.Sequential):
    """Fully connected stack ``[B, in_dim] -> [B, out]``.

    Args:
        in_dim: input width.
        hidden: hidden widths; each is Linear -> (BatchNorm) -> activation -> (Dropout).
        out_dim: optional final Linear without activation (e.g. 1 for a tower's logit).
        dropout, activation, batch_norm: per hidden layer.

    Example::

        >>> import torch
        >>> MLP(8, [16, 4], out_dim=1)(torch.randn(2, 8)).shape
        torch.Size([2, 1])
    """

    def __init__(
        self,
        in_dim: int,
        hidden: list[int],
        out_dim: int | None = None,
        dropout: float = 0.0,
        act: str = "relu",
        batch_norm: bool = False,
    ) -> None:
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers.append(nn.Linear(d, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(activation(act))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = h
        if out_dim is not None:
            layers.append(nn.Linear(d, out_dim))
            d = out_dim
        super().__init__(*layers)
        self.in_dim = in_dim
        self.out_dim = d

    def forward(self, x: Tensor) -> Tensor:  # noqa: D401 - same as Sequential
        return super().forward(x)
