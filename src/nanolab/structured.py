"""Attention heads and MLP neurons as groups of weights: their norms (the group lasso's groups
and structured pruning's importance score), and removing them to make a smaller dense model.

A head h of a block owns its rows of the query, key and value projections (and their biases)
and its columns of the attention output projection; an MLP neuron j owns row j of c_fc (and
its bias) and column j of the MLP's c_proj. Zeroing a group removes its contribution exactly
(a zero query and key give uniform attention over zero values; GELU(0) = ReLU(0)^2 = 0), so the
model without it computes what the masked model computes.

Structured pruning removes from every block the same number of heads and neurons, those with
the smallest L2 norm of their group's weights in that block, so the result is a normal GPT of
the same depth and width with n_head, head_dim and mlp_hidden set: it loads, samples, evaluates
and fine-tunes as any other model.
"""

from __future__ import annotations

import dataclasses

import torch

from nanolab import ConfigError
from nanolab.model import GPT, GPTConfig

# a group whose weights are all zero has no gradient direction: its norm is taken above 0
NORM_FLOOR = 1e-12


def group_norms(model: GPT) -> tuple[torch.Tensor, torch.Tensor]:
    """Each head's and each MLP neuron's weight norm, (n_layer, n_head) and (n_layer,
    mlp_width); differentiable (the group-lasso penalty is their sum)."""
    c = model.config
    heads, neurons = [], []
    for block in model.transformer.h:
        attn, mlp = block.attn, block.mlp
        sq = attn.c_attn.weight.view(3, c.n_head, c.head_size, -1).square().sum((0, 2, 3))
        sq = sq + attn.c_proj.weight.view(-1, c.n_head, c.head_size).square().sum((0, 2))
        if attn.c_attn.bias is not None:
            sq = sq + attn.c_attn.bias.view(3, c.n_head, c.head_size).square().sum((0, 2))
        heads.append((sq + NORM_FLOOR).sqrt())
        sq = mlp.c_fc.weight.square().sum(1) + mlp.c_proj.weight.square().sum(0)
        if mlp.c_fc.bias is not None:
            sq = sq + mlp.c_fc.bias.square()
        neurons.append((sq + NORM_FLOOR).sqrt())
    return torch.stack(heads), torch.stack(neurons)


def removed_counts(config: GPTConfig, amount: float) -> tuple[int, int]:
    """Heads and neurons removed from each block for the fraction `amount`, rounded; a block
    keeps at least one of each."""
    if not 0 <= amount < 1:
        raise ConfigError(f"amount {amount} must be a fraction in [0, 1)")
    heads, neurons = round(amount * config.n_head), round(amount * config.mlp_width)
    if heads >= config.n_head:
        raise ConfigError(
            f"amount {amount} would remove {heads} of the {config.n_head} heads of every "
            "layer: a layer must keep one; use an amount below "
            f"{(config.n_head - 0.5) / config.n_head:.3f}"
        )
    if neurons >= config.mlp_width:
        raise ConfigError(
            f"amount {amount} would remove all {config.mlp_width} MLP neurons of every layer"
        )
    return heads, neurons


def kept_groups(model: GPT, amount: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each block, the indices (ascending) of the heads and neurons kept: all but the
    `amount` fraction with the smallest group norms."""
    n_heads, n_neurons = removed_counts(model.config, amount)
    with torch.no_grad():
        heads, neurons = group_norms(model)

    def largest(norms: torch.Tensor, removed: int) -> torch.Tensor:
        return torch.topk(norms, norms.numel() - removed).indices.sort().values

    return [(largest(h, n_heads), largest(n, n_neurons)) for h, n in zip(heads, neurons)]


def _rows(config: GPTConfig, heads: torch.Tensor) -> torch.Tensor:
    """The rows of c_attn (q, k and v) that belong to `heads`."""
    d, inner = config.head_size, config.n_head * config.head_size
    per_head = (heads[:, None] * d + torch.arange(d)).flatten()
    return torch.cat([per_head + part * inner for part in range(3)])


def mask_groups(model: GPT, kept: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Zero, in place, every head's and neuron's weights but the kept ones."""
    c = model.config
    with torch.no_grad():
        for block, (heads, neurons) in zip(model.transformer.h, kept):
            attn, mlp = block.attn, block.mlp
            rows = torch.ones(attn.c_attn.weight.size(0), dtype=torch.bool)
            rows[_rows(c, heads)] = False
            columns = torch.ones(c.n_head * c.head_size, dtype=torch.bool)
            columns[_rows(c, heads)[: len(heads) * c.head_size]] = False
            attn.c_attn.weight[rows] = 0
            attn.c_proj.weight[:, columns] = 0
            if attn.c_attn.bias is not None:
                attn.c_attn.bias[rows] = 0
            gone = torch.ones(c.mlp_width, dtype=torch.bool)
            gone[neurons] = False
            mlp.c_fc.weight[gone] = 0
            mlp.c_proj.weight[:, gone] = 0
            if mlp.c_fc.bias is not None:
                mlp.c_fc.bias[gone] = 0


def shrink(model: GPT, kept: list[tuple[torch.Tensor, torch.Tensor]]) -> GPT:
    """A smaller dense GPT holding only the kept heads and neurons (the same number in every
    block) and every other weight of `model`."""
    c = model.config
    n_head, width = len(kept[0][0]), len(kept[0][1])
    small = GPT(dataclasses.replace(c, n_head=n_head, head_dim=c.head_size, mlp_hidden=width))
    state = dict(model.state_dict())  # load_state_dict copies what is kept
    for i, (heads, neurons) in enumerate(kept):
        p = f"transformer.h.{i}."
        rows = _rows(c, heads)
        state[p + "attn.c_attn.weight"] = state[p + "attn.c_attn.weight"][rows]
        state[p + "attn.c_proj.weight"] = state[p + "attn.c_proj.weight"][
            :, rows[: n_head * c.head_size]
        ]
        state[p + "mlp.c_fc.weight"] = state[p + "mlp.c_fc.weight"][neurons]
        state[p + "mlp.c_proj.weight"] = state[p + "mlp.c_proj.weight"][:, neurons]
        if c.bias:
            state[p + "attn.c_attn.bias"] = state[p + "attn.c_attn.bias"][rows]
            state[p + "mlp.c_fc.bias"] = state[p + "mlp.c_fc.bias"][neurons]
    small.load_state_dict(state)
    return small.to(next(model.parameters()).device)
