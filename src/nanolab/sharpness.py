"""Sharpness: the top eigenvalues of the Hessian of the training loss, by Lanczos on
Hessian-vector products (group `sharpness`, off by default).

The loss is the training objective as `train/loss` logs it: the mean over the probe's target
tokens of the configured loss (z-loss included), in float32 and eval mode (no dropout). The
sharpness scales with that normalisation: a sum over tokens would be probe_tokens times larger.

Gradient descent at learning rate η is stable on a quadratic only while the sharpness stays
below its threshold: 2/η for plain GD, (2+2β)/η with heavy-ball momentum β and
(2+2β)/((1+2β)η) with Nesterov's (Cohen et al. 2021, arXiv 2103.00065). For Adam the
relevant quantity is the preconditioned sharpness, the top eigenvalue of P^-1 H with
P = (1-β1^t)·diag(sqrt(v_t/(1-β2^t)) + ε), stable below (2+2β1)/((1-β1)η), 38/η at β1 = 0.9
(Cohen et al. 2022, arXiv 2207.14484). It is computed as the top eigenvalue of the symmetric
P^-1/2 H P^-1/2, which has the same spectrum, so that Lanczos applies.

Double backward needs the math attention kernel (flash kernels have none) and the uncompiled
module (torch.compile has no double backward). Lanczos keeps `lanczos_iters` float64 copies
of the parameter vector: 8·iters bytes per parameter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch.nn.attention import SDPBackend, sdpa_kernel

from nanolab import Abandoned, ConfigError
from nanolab.dataloader import BatchSampler

PROBE_STREAM = 1 << 20  # the probe set's data stream: apart from every training stream
Operator = Callable[[torch.Tensor], torch.Tensor]  # a symmetric linear map on flat float64 vectors


def check_sharpness(cfg: DictConfig) -> None:
    """Raise ConfigError for values no measurement could use."""
    if cfg.every < 0:
        raise ConfigError(f"sharpness.every={cfg.every} must be >= 0 (0: off)")
    for key in ("k", "probe_tokens", "lanczos_iters"):
        if not cfg[key] > 0:
            raise ConfigError(f"sharpness.{key}={cfg[key]} must be > 0")
    if cfg.k > cfg.lanczos_iters:
        raise ConfigError(
            f"sharpness.k={cfg.k} eigenvalues need sharpness.lanczos_iters "
            f">= {cfg.k} (it is {cfg.lanczos_iters})"
        )


def lanczos(
    operator: Operator,
    dim: int,
    k: int,
    iters: int,
    generator: torch.Generator,
    stop: Sequence[int] = (),
) -> list[float]:
    """The k largest eigenvalues of a symmetric operator on R^dim, largest first, by `iters`
    Lanczos steps with full reorthogonalisation (exact once iters reaches dim). Raises
    Abandoned at the next step once `stop` (the trainer's stop requests) is non-empty."""
    iters = min(iters, dim)
    basis = torch.zeros(iters, dim, dtype=torch.float64)
    q = torch.randn(dim, generator=generator, dtype=torch.float64)
    q /= q.norm()
    alphas, betas = [], []
    for j in range(iters):
        if stop:
            raise Abandoned(f"signal {stop[0]} arrived during a sharpness measurement")
        basis[j] = q
        w = operator(q)
        alphas.append(float(w @ q))
        for _ in range(2):  # twice is enough (Parlett's "twice is enough")
            w -= basis[: j + 1].T @ (basis[: j + 1] @ w)
        beta = float(w.norm())
        if j == iters - 1 or beta <= 1e-12 * max(1.0, abs(alphas[0])):  # invariant subspace found
            break
        betas.append(beta)
        q = w / beta
    n = len(alphas)
    tridiagonal = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if n > 1:
        off = torch.tensor(betas[: n - 1], dtype=torch.float64)
        tridiagonal += torch.diag(off, 1) + torch.diag(off, -1)
    return torch.linalg.eigvalsh(tridiagonal).flip(0)[:k].tolist()


def hessian_operator(loss: torch.Tensor, params: list[torch.Tensor]) -> Operator:
    """v -> H v for the Hessian of `loss` in `params`, by double backward through one graph
    kept for every product. Vectors are float64 on the CPU, wherever the parameters are."""
    grads = torch.autograd.grad(loss, params, create_graph=True)
    flat_grad = torch.cat([g.reshape(-1) for g in grads])

    def hvp(v: torch.Tensor) -> torch.Tensor:
        products = torch.autograd.grad(
            flat_grad, params, grad_outputs=v.to(flat_grad), retain_graph=True
        )
        return torch.cat([h.reshape(-1) for h in products]).to("cpu", torch.float64)

    return hvp


def adam_preconditioner(optimizer: Any, params: list[torch.Tensor]) -> torch.Tensor | None:
    """P^-1/2 as a flat float64 vector for an Adam/AdamW optimizer that has taken a step, with
    P = (1-β1^t)·(sqrt(v_t/(1-β2^t)) + ε); None for other optimizers or before the first step."""
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return None
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    parts = []
    for p in params:
        state, group = optimizer.state.get(p), group_of[id(p)]
        if not state or "exp_avg_sq" not in state:
            return None
        (beta1, beta2), t = group["betas"], float(state["step"])
        v = state["exp_avg_sq"].detach().to(torch.float64).reshape(-1).cpu()
        p_diag = (1 - beta1**t) * ((v / (1 - beta2**t)).sqrt() + group["eps"])
        parts.append(p_diag.rsqrt())
    return torch.cat(parts)


def stability_threshold(optim_cfg: DictConfig, lr: float) -> float | None:
    """The sharpness above which the optimizer at learning rate `lr` is unstable on a quadratic
    (preconditioned sharpness for Adam); None where no such threshold is known, and at lr 0
    (the end of a decay to zero), where every sharpness is stable."""
    if not lr > 0:
        return None
    if optim_cfg.name == "sgd":
        beta = optim_cfg.momentum
        return (
            (2 + 2 * beta) / ((1 + 2 * beta) * lr)
            if optim_cfg.nesterov and beta
            else (2 + 2 * beta) / lr
        )
    if optim_cfg.name in ("adam", "adamw"):
        beta1 = optim_cfg.betas[0]
        return (2 + 2 * beta1) / ((1 - beta1) * lr)
    return None


class SharpnessProbe:
    """Measures the sharpness on a fixed probe set: `windows` (x, y) drawn once, or the whole
    training set of a full-batch run."""

    def __init__(
        self,
        cfg: DictConfig,
        model: torch.nn.Module,
        loss_fn: Callable,
        x: torch.Tensor,
        y: torch.Tensor,
        seed: int,
    ) -> None:
        self.cfg, self.model, self.loss_fn, self.x, self.y = cfg, model, loss_fn, x, y
        self.generator = torch.Generator().manual_seed(seed)  # Lanczos start vectors

    def should_measure(self, step: int) -> bool:
        return self.cfg.sharpness.every > 0 and step % self.cfg.sharpness.every == 0

    def measure(self, optimizer: Any, lr: float, stop: Sequence[int] = ()) -> dict[str, float]:
        """sharpness/top1 .. topk, the optimizer's threshold at `lr` and, for Adam/AdamW after
        its first step, sharpness/precond_top1; Abandoned once `stop` is non-empty."""
        cfg = self.cfg.sharpness
        params = [p for p in self.model.parameters() if p.requires_grad]
        dim = sum(p.numel() for p in params)
        was_training = self.model.training
        self.model.eval()
        try:
            with sdpa_kernel(SDPBackend.MATH):
                logits = self.model(self.x)
                loss = self.loss_fn(
                    logits.reshape(-1, logits.size(-1)).float(), self.y.reshape(-1), self.cfg.loss
                )
            hvp = hessian_operator(loss, params)
            top = lanczos(hvp, dim, cfg.k, cfg.lanczos_iters, self.generator, stop)
            stats = {f"sharpness/top{i + 1}": value for i, value in enumerate(top)}
            scale = adam_preconditioner(optimizer, params)
            if scale is not None:
                stats["sharpness/precond_top1"] = lanczos(
                    lambda v: scale * hvp(scale * v),
                    dim,
                    1,
                    cfg.lanczos_iters,
                    self.generator,
                    stop,
                )[0]
        finally:
            self.model.train(was_training)
        threshold = stability_threshold(self.cfg.optim, lr)
        if threshold is not None and math.isfinite(threshold):
            stats["sharpness/threshold"] = threshold
        return stats


def probe_windows(
    tokens: np.ndarray,
    probe_tokens: int,
    block_size: int,
    seed: int,
    targets: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """probe_tokens // block_size random (x, y) windows of `tokens` (with `targets` when they
    differ), drawn as the training batches are but from a generator of their own (the training
    streams are untouched)."""
    return BatchSampler(
        tokens,
        batch_size=max(1, probe_tokens // block_size),
        block_size=block_size,
        seed=seed,
        device=torch.device("cpu"),
        targets=targets,
    ).next_batch()
