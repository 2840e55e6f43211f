"""The gradient noise scale during training (McCandlish et al. 2018, "An Empirical Model of
Large-Batch Training", arXiv 1812.06162, Appendix A).

A step's gradient is the mean over B_big tokens (every micro-batch of every process); its first
micro-batch's gradient, taken before the others accumulate onto it, is the mean over B_small
tokens. The expected squared norm of a mean over B tokens is |G|² + tr(Σ)/B, where G is the
true gradient and Σ the covariance of one token's gradient, so the two measured norms give
unbiased estimates of both:

    |G|²  ≈ (B_big·|G_big|² − B_small·|G_small|²) / (B_big − B_small)
    tr(Σ) ≈ (|G_small|² − |G_big|²) / (1/B_small − 1/B_big)

One step's estimates are noisy (either may come out negative), so, as in the paper, each is an
exponential moving average over steps (`noise_scale.ema`), and B_simple is the ratio of the two
averages: the batch size, in tokens, at which the gradient's noise equals its signal. Under DDP
every process's first micro-batch is measured and their squared norms averaged.

Tokens of one window share their context, so they are not independent examples; B_simple in
tokens is the paper's B_simple with a token as the example, as Kaplan et al. (2020) measure
their critical batch size.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from nanolab import ConfigError


def check_noise_scale(cfg: DictConfig, full_batch: bool) -> None:
    """Raise ConfigError for settings no measurement could use."""
    if not 0 <= cfg.ema < 1:
        raise ConfigError(f"noise_scale.ema={cfg.ema} must lie in [0, 1) (0: no averaging)")
    if cfg.enabled and full_batch:
        raise ConfigError(
            "noise_scale.enabled=true needs randomly drawn batches; trainer.full_batch=true "
            "takes the same windows every step"
        )


def squared_grad_norm(model: torch.nn.Module) -> torch.Tensor:
    """The squared norm of the model's current gradients, as a device tensor."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads).square()


class NoiseScale:
    """Moving averages of |G|² and tr(Σ) from each step's two squared gradient norms."""

    def __init__(self, ema: float, b_small: int, b_big: int) -> None:
        self.ema, self.b_small, self.b_big = ema, b_small, b_big
        self.grad_sq = self.trace_cov = 0.0  # the averages, not yet corrected for their start
        self.steps = 0
        # steps observed but not yet averaged: reading a device tensor waits for the device,
        # which `metrics` does once per log interval instead of once per step
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []

    def observe(self, small_sq: torch.Tensor, big_sq: torch.Tensor) -> None:
        """One step's squared gradient norms: its first micro-batch's and the whole step's."""
        self.pending.append((small_sq.detach(), big_sq.detach()))

    def _average(self) -> None:
        if not self.pending:
            return
        pairs = torch.stack([torch.stack(p) for p in self.pending]).double().tolist()
        self.pending = []
        for small, big in pairs:
            grad_sq = (self.b_big * big - self.b_small * small) / (self.b_big - self.b_small)
            trace_cov = (small - big) / (1 / self.b_small - 1 / self.b_big)
            self.grad_sq = self.ema * self.grad_sq + (1 - self.ema) * grad_sq
            self.trace_cov = self.ema * self.trace_cov + (1 - self.ema) * trace_cov
            self.steps += 1

    def metrics(self) -> dict[str, float]:
        """noise/grad_sq, noise/trace_cov (averages corrected for their start at zero) and
        noise/b_simple, their ratio in tokens (left out while |G|²'s average is not positive)."""
        self._average()
        if not self.steps:
            return {}
        start = 1 - self.ema**self.steps
        values = {"noise/grad_sq": self.grad_sq / start, "noise/trace_cov": self.trace_cov / start}
        if self.grad_sq > 0:
            values["noise/b_simple"] = self.trace_cov / self.grad_sq
        return values

    def state_dict(self) -> dict[str, float | int]:
        self._average()
        return {"grad_sq": self.grad_sq, "trace_cov": self.trace_cov, "steps": self.steps}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        self.grad_sq, self.trace_cov = float(state["grad_sq"]), float(state["trace_cov"])
        self.steps = int(state["steps"])
