"""Sharpness against known answers: quadratics with a chosen spectrum, least squares, the
dense preconditioned Hessian, a reference Hessian-vector product on a tiny GPT, and the edge
of stability itself (GD and Adam on a small MLP)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from nanolab.model import GPT, GPTConfig
from nanolab.sharpness import (
    SharpnessProbe,
    adam_preconditioner,
    hessian_operator,
    lanczos,
    stability_threshold,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (conftest)


def quadratic(spectrum: list[float], seed: int = 0) -> torch.Tensor:
    """A symmetric matrix with the given eigenvalues in a random orthonormal basis."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(
        torch.randn(len(spectrum), len(spectrum), generator=g, dtype=torch.float64)
    )
    return q @ torch.diag(torch.tensor(spectrum, dtype=torch.float64)) @ q.T


def test_sharpness_of_a_quadratic_is_its_top_eigenvalues():
    spectrum = [7.3, 5.1, 4.9, *torch.linspace(-2.0, 3.0, 37).tolist()]
    a = quadratic(spectrum)
    theta = torch.nn.Parameter(torch.randn(40, dtype=torch.float64))
    loss = 0.5 * theta @ a @ theta
    top = lanczos(hessian_operator(loss, [theta]), 40, 3, 40, torch.Generator().manual_seed(1))
    assert top == pytest.approx([7.3, 5.1, 4.9], abs=1e-5)


def test_sharpness_of_least_squares_is_the_top_eigenvalue_of_the_gram_matrix():
    g = torch.Generator().manual_seed(0)
    x, y = (
        torch.randn(100, 20, generator=g, dtype=torch.float64),
        torch.randn(100, generator=g, dtype=torch.float64),
    )
    w = torch.nn.Parameter(torch.zeros(20, dtype=torch.float64))
    loss = 0.5 * ((x @ w - y) ** 2).mean()
    top = lanczos(hessian_operator(loss, [w]), 20, 1, 20, torch.Generator().manual_seed(1))[0]
    assert top == pytest.approx(torch.linalg.eigvalsh(x.T @ x / 100)[-1].item(), abs=1e-5)


def test_preconditioned_sharpness_is_the_top_eigenvalue_of_p_inverse_a():
    a = quadratic([9.0, 4.0, *torch.linspace(0.1, 2.0, 18).tolist()], seed=3)
    theta = torch.nn.Parameter(
        torch.randn(20, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    )
    adam = torch.optim.Adam([theta], lr=0.01, betas=(0.9, 0.999), eps=1e-8)
    for _ in range(5):
        adam.zero_grad()
        (0.5 * theta @ a @ theta).backward()
        adam.step()
    scale = adam_preconditioner(adam, [theta])
    hvp = hessian_operator(0.5 * theta @ a @ theta, [theta])
    measured = lanczos(
        lambda v: scale * hvp(scale * v), 20, 1, 20, torch.Generator().manual_seed(1)
    )[0]
    state = adam.state[theta]
    p = (1 - 0.9**5) * ((state["exp_avg_sq"] / (1 - 0.999**5)).sqrt() + 1e-8)
    # P^-1 A itself: not symmetric
    dense = torch.linalg.eigvals(torch.diag(1 / p) @ a).real.max().item()
    assert measured == pytest.approx(dense, rel=1e-6)
    assert adam_preconditioner(torch.optim.SGD([theta], lr=0.1), [theta]) is None


def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(
        n_layer=2,
        n_head=2,
        n_embd=16,
        block_size=8,
        dropout=0.1,
        bias=True,
        logit_softcap=None,
        vocab_size=11,
    )
    return GPT(config).double()


def test_hvp_on_a_tiny_gpt_matches_forward_over_reverse_autodiff():
    model = tiny_gpt()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(11, (3, 8), generator=g), torch.randint(11, (3, 8), generator=g)
    cfg = OmegaConf.create(
        {
            "sharpness": {"every": 1, "k": 1, "probe_tokens": 24, "lanczos_iters": 5},
            "loss": {},
            "optim": {"name": "muon"},
        }
    )

    def loss_fn(logits, targets, _cfg):
        return torch.nn.functional.cross_entropy(logits, targets)

    params = dict(model.named_parameters())
    v = {k: torch.randn(p.shape, generator=g, dtype=torch.float64) for k, p in params.items()}

    def loss_of(p):
        logits = torch.func.functional_call(model, p, (x,))
        return loss_fn(logits.reshape(-1, 11), y.reshape(-1), None)

    model.eval()
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        reference = torch.func.jvp(torch.func.grad(loss_of), (params,), (v,))[1]
        flat_v = torch.cat([t.reshape(-1) for t in v.values()])
        measured = hessian_operator(loss_of(params), list(params.values()))(flat_v)
    flat_ref = torch.cat([reference[k].reshape(-1) for k in params])
    assert (measured - flat_ref).norm() <= 1e-5 * flat_ref.norm()

    # The probe measures in eval mode under the math kernel and leaves training as it was:
    # dropout on, and the default (flash where available) attention for the next step.
    model.train()
    probe = SharpnessProbe(cfg, model, loss_fn, x, y, seed=0)
    stats = probe.measure(optimizer=None, lr=0.1)
    # muon: no known threshold
    assert stats["sharpness/top1"] > 0 and "sharpness/threshold" not in stats
    assert model.training
    model(x).sum().backward()


def test_stability_thresholds():
    def sgd(momentum: float, nesterov: bool = False):
        return OmegaConf.create({"name": "sgd", "momentum": momentum, "nesterov": nesterov})

    assert stability_threshold(sgd(0.0), 0.4) == pytest.approx(5.0)
    assert stability_threshold(sgd(0.9), 0.1) == pytest.approx(38.0)
    assert stability_threshold(sgd(0.9, nesterov=True), 0.1) == pytest.approx(3.8 / 0.28)
    assert stability_threshold(
        OmegaConf.create({"name": "adamw", "betas": [0.9, 0.99]}), 0.01
    ) == pytest.approx(3800.0)
