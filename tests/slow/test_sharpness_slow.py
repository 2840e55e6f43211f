"""The edge of stability on a small MLP (Cohen et al.): gradient descent hovers at
2/lr, Adam's preconditioned sharpness at 38/lr."""

from __future__ import annotations

import statistics

import pytest
import torch

from nanolab.sharpness import (
    adam_preconditioner,
    hessian_operator,
    lanczos,
)


def mlp_sharpness(
    optimizer: str, lr: float, first: int, steps: int = 1000, every: int = 10
) -> list[float]:
    """Full-batch training of a tanh MLP 10-64-64-4 with MSE on 200 random points; the (for
    Adam: preconditioned) sharpness every `every` steps from step `first` on."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 10, generator=g), torch.randn(200, 4, generator=g)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(10, 64),
        torch.nn.Tanh(),
        torch.nn.Linear(64, 64),
        torch.nn.Tanh(),
        torch.nn.Linear(64, 4),
    )
    params = list(net.parameters())
    dim = sum(p.numel() for p in params)
    opt = torch.optim.SGD(params, lr=lr) if optimizer == "gd" else torch.optim.Adam(params, lr=lr)
    lanczos_start = torch.Generator().manual_seed(1)
    values = []
    for step in range(steps + 1):
        if step >= first and step % every == 0:
            hvp = hessian_operator(((net(x) - y) ** 2).mean(), params)
            scale = (
                adam_preconditioner(opt, params)
                if optimizer == "adam"
                else torch.ones(dim, dtype=torch.float64)
            )
            values.append(lanczos(lambda v: scale * hvp(scale * v), dim, 1, 20, lanczos_start)[0])
        opt.zero_grad()
        ((net(x) - y) ** 2).mean().backward()
        opt.step()
    return values


def test_gradient_descent_hovers_at_the_edge_of_stability():
    assert statistics.median(mlp_sharpness("gd", 0.4, first=200)) == pytest.approx(2 / 0.4, rel=0.1)
    assert max(mlp_sharpness("gd", 0.1, first=0)) < 20  # well below its own 2/η = 20


def test_adam_preconditioned_sharpness_hovers_at_38_over_lr():
    assert statistics.median(mlp_sharpness("adam", 0.01, first=700)) == pytest.approx(
        38 / 0.01, rel=0.1
    )
