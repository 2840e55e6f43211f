"""μP's optimizer rules: the per-group learning rates and weight decays that, with the model's
own init and multipliers (src/nanolab/model.py), make the best learning rate carry over from
the base width to any width (Tensor Programs V, Yang et al. 2022, arXiv 2203.03466, Table 3;
microsoft/mup's MuAdamW and MuSGD).

Parameters are "hidden" (the blocks' weight matrices, both dimensions growing with width) or
"vector-like" (embeddings, the output head, norms and biases: one dimension grows). With width
multiplier m = n_embd / mup_base_width:

- AdamW / Adam: hidden matrices at lr / m; everything else at lr. Weight decay of the hidden
  matrices is multiplied by m, so the decay per step, lr x weight_decay in torch's AdamW, is
  the base width's at every width (microsoft/mup's MuAdamW does the same; without it the
  effective decay would fade as 1/m and the tuned value would not transfer).
- SGD: vector-like parameters at lr x m (weight decay / m), hidden matrices at lr (MuSGD).
- Muon: no learning-rate change. Its update is orthogonalised and scaled by the matrix's shape
  ratio, which already gives hidden matrices the μP update size; its AdamW part holds only
  vector-like parameters. An lr rule that grows with width (adjust_lr_fn=match_rms_adamw) is
  refused.
- With depth_alpha (CompleteP, arXiv 2505.01618, Table 1), AdamW's hidden matrices also run at
  (L / L_base)^(alpha - 1): 1 at alpha = 1.

Each rule is a `lr_scale` per group, which the schedule already multiplies (run.set_lr), so
warmup and decay apply to every group alike. At m = 1 and depth_alpha 0 every parameter's lr
and decay equal the standard parametrization's (tests/test_mup.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import DictConfig

from nanolab import ConfigError
from nanolab.model import GPT

# the optimizers μP has a rule for; any other is refused with parametrization=mup
RULES = ("adamw", "adam", "sgd", "muon")


def check_mup(model: Mapping[str, Any], optim: DictConfig) -> None:
    """Refuse a μP run whose optimizer has no μP rule, in one line."""
    if model.get("parametrization", "sp") != "mup":
        return
    if optim.name not in RULES:
        raise ConfigError(
            f"model.parametrization=mup has no rule for optim={optim.name}: use one of "
            f"{', '.join(RULES)}, or model.parametrization=sp"
        )
    if optim.name == "muon" and optim.adjust_lr_fn == "match_rms_adamw":
        raise ConfigError(
            "model.parametrization=mup with optim.adjust_lr_fn=match_rms_adamw: that rule grows "
            "Muon's lr with sqrt(width), which μP forbids; use adjust_lr_fn=null"
        )
    if optim.name == "sgd" and model.get("depth_alpha", 0) != 0:
        raise ConfigError(
            "model.depth_alpha has a learning-rate rule for AdamW and Muon only (CompleteP); "
            "set model.depth_alpha=0 with optim=sgd"
        )


def hidden_matrices(model: GPT) -> list[torch.nn.Parameter]:
    """The blocks' weight matrices: fan-in and fan-out both grow with width."""
    return [p for p in model.transformer.h.parameters() if p.requires_grad and p.dim() == 2]


def _depth_lr(model: GPT) -> float:
    c = model.config
    if c.depth_alpha == 0 or c.mup_base_depth is None:
        return 1.0
    return (c.n_layer / c.mup_base_depth) ** (c.depth_alpha - 1)


def _split(model: GPT) -> tuple[list, list, list]:
    """(hidden matrices, other matrices: embeddings and an untied head, vectors)."""
    hidden = hidden_matrices(model)
    ids = {id(p) for p in hidden}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    return hidden, [p for p in rest if p.dim() >= 2], [p for p in rest if p.dim() < 2]


def adam_groups(model: GPT, weight_decay: float) -> list[dict]:
    """AdamW's groups under μP: hidden matrices at lr/m (and the depth factor) with decay
    scaled to keep lr x decay; other matrices (embeddings, head) and vectors as SP."""
    hidden, matrices, vectors = _split(model)
    scale = _depth_lr(model) / model.config.width_mult
    return [
        {"params": hidden, "weight_decay": weight_decay / scale, "lr_scale": scale},
        {"params": matrices, "weight_decay": weight_decay},
        {"params": vectors, "weight_decay": 0.0},
    ]


def sgd_groups(model: GPT, weight_decay: float) -> list[dict]:
    """SGD's groups under μP (MuSGD): vector-like parameters at lr x m, decay / m; hidden
    matrices as SP. Biases and norm gains are vector-like and never decayed."""
    hidden, matrices, vectors = _split(model)
    m = model.config.width_mult
    return [
        {"params": hidden, "weight_decay": weight_decay},
        {"params": matrices, "weight_decay": weight_decay / m, "lr_scale": m},
        {"params": vectors, "weight_decay": 0.0, "lr_scale": m},
    ]
