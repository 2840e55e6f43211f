"""Training compute: FLOPs per token of a model's shape, and the steps a FLOP budget buys.

The convention (printed with every scaling result, because the fitted exponents depend on
it): N counts the weight matrices that multiply activations, the blocks' attention and MLP
matrices and the output head over the true vocabulary (a head tied to the embedding counted
once); embedding lookups, norms and biases are left out. A token costs 6N FLOPs forward and
backward (2 per multiply-add, times 3 for the two backward matmuls), plus attention's
12·L·H·Q·T for the scores and the weighted values over a context of T (nanoGPT's estimate_mfu
after PaLM's appendix B; causal masking is not subtracted).
"""

from __future__ import annotations

from nanolab import ConfigError
from nanolab.model import GPTConfig

CONVENTION = (
    "FLOPs/token = 6 N + 12 L H Q T; N = block matrices + output head (true vocabulary, "
    "a tied head once), embedding lookups, norms and biases excluded"
)


def matrix_params(c: GPTConfig) -> int:
    """N: the parameters of every matrix a token is multiplied by."""
    inner = c.n_head * c.head_size
    attention = c.n_embd * 3 * inner + inner * c.n_embd
    mlp = 2 * c.n_embd * c.mlp_width
    return c.n_layer * (attention + mlp) + c.vocab_size * c.n_embd


def flops_per_token(c: GPTConfig) -> float:
    """Training FLOPs per token: 6N plus the attention term, with N from `matrix_params`."""
    return 6 * matrix_params(c) + 12 * c.n_layer * c.n_head * c.head_size * c.block_size


def budget_iters(budget: float, c: GPTConfig, tokens_per_step: int) -> int:
    """The optimizer steps that `budget` FLOPs buy at this shape and batch (rounded down);
    ConfigError when they are fewer than one."""
    step_flops = flops_per_token(c) * tokens_per_step
    steps = int(budget // step_flops)
    if steps < 1:
        raise ConfigError(
            f"trainer.flops_budget={budget:.3g} is less than one step of this model "
            f"({step_flops:.3g} FLOPs: {flops_per_token(c):.3g} per token x {tokens_per_step} "
            "tokens); raise it or shrink the model or batch"
        )
    return steps
