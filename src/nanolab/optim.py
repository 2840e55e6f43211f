"""Optimizers (group `optim`) and learning-rate schedules (group `schedule`).

Each optimizer is one builder in OPTIMIZERS and one yaml in configs/optim/. Weight decay
applies to parameters of two or more dimensions only (matmul weights and embeddings), never
to biases and norm gains, as in nanoGPT and GPT-2. lion, shampoo, soap and schedulefree_adamw
come from pytorch-optimizer (the `optimizers` extra).

The schedule gives a learning rate per step; a parameter group with an `lr_scale` runs at that
multiple of it (Muon's AdamW part, at optim.adamw_lr). Schedules are pure functions of the
step, so a resumed run needs no scheduler state.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from omegaconf import DictConfig

from nanolab import ConfigError
from nanolab.mup import adam_groups, check_mup, sgd_groups


def _param_groups(params: Iterable[torch.nn.Parameter], weight_decay: float) -> list[dict]:
    params = list(params)
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def _trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]  # tied weights appear once


def _mup(model: torch.nn.Module) -> bool:
    config = getattr(model, "config", None)
    return getattr(config, "parametrization", "sp") == "mup"


def _adamw(model: torch.nn.Module, cfg: DictConfig, device: torch.device) -> torch.optim.Optimizer:
    # `auto` fuses on CUDA, where the kernel is markedly faster. On CPU it measured 4% faster
    # per nano step, but it rounds differently from the foreach kernel that made the
    # committed results, so there it is opt-in (`optim.fused=true`).
    fused = cfg.fused
    if fused == "auto":
        fused = device.type == "cuda"
    groups = (
        adam_groups(model, cfg.weight_decay)
        if _mup(model)
        else _param_groups(_trainable(model), cfg.weight_decay)
    )
    return torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        eps=cfg.eps,
        fused=fused or None,
    )


def _sgd(model: torch.nn.Module, cfg: DictConfig, device: torch.device) -> torch.optim.Optimizer:
    groups = (
        sgd_groups(model, cfg.weight_decay)
        if _mup(model)
        else _param_groups(_trainable(model), cfg.weight_decay)
    )
    return torch.optim.SGD(
        groups,
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
    )


def _adafactor(
    model: torch.nn.Module, cfg: DictConfig, device: torch.device
) -> torch.optim.Optimizer:
    return torch.optim.Adafactor(
        _param_groups(_trainable(model), cfg.weight_decay),
        lr=cfg.lr,
        beta2_decay=cfg.beta2_decay,
        eps=(cfg.eps1, cfg.eps2),
        d=cfg.clip_threshold,
    )


def muon_matrices(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The hidden weight matrices of the transformer blocks: Muon's share of the parameters.
    Embeddings, the output head, norms and biases go to AdamW (as nanochat and modded-nanogpt)."""
    blocks = model.transformer.h
    return [p for p in blocks.parameters() if p.requires_grad and p.dim() == 2]


class CombinedOptimizer:
    """Several optimizers over disjoint parameters, stepped, saved and loaded as one. Its
    param_groups are theirs, in order, so learning-rate setting, gradient clipping and the
    GradScaler see every group."""

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    @property
    def state(self) -> dict:
        return {p: s for optimizer in self.optimizers for p, s in optimizer.state.items()}

    def step(self, closure: Callable | None = None) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for optimizer, saved in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)


class StackedMuon(torch.optim.Muon):
    """torch.optim.Muon with the Newton-Schulz iterations of same-shaped matrices run together,
    one batched matmul per shape (the blocks of a GPT share their shapes) instead of one per
    matrix: 1.9x faster on this 2-core CPU at nano's shapes, where torch's loop costs a third of
    a step. Per matrix the arithmetic is torch's (momentum, bf16 iterations with its
    coefficients, lr adjustment, decoupled decay), and so is the state: checkpoints move between
    the two. tests/test_optim.py holds it to torch.optim.Muon."""

    @torch.no_grad()
    def step(self, closure: Callable | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            by_shape: dict[torch.Size, list[torch.nn.Parameter]] = {}
            for p in group["params"]:
                if p.grad is not None:
                    by_shape.setdefault(p.shape, []).append(p)
            for shape, params in by_shape.items():
                updates = []
                for p in params:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p.grad)
                    buf = state["momentum_buffer"]
                    buf.lerp_(p.grad, 1 - group["momentum"])
                    updates.append(
                        p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                    )
                orthogonal = _newton_schulz(torch.stack(updates), group)
                lr = float(group["lr"])
                step = lr * _muon_lr_ratio(group["adjust_lr_fn"], shape)
                for p, update in zip(params, orthogonal.unbind(0), strict=True):
                    p.mul_(1 - lr * group["weight_decay"])
                    p.add_(update, alpha=-step)
        return loss


def _newton_schulz(updates: torch.Tensor, group: dict) -> torch.Tensor:
    """torch.optim.Muon's quintic Newton-Schulz orthogonalisation in bfloat16, on a stack of
    same-shaped matrices at once (wide orientation, each scaled to norm at most 1 first)."""
    a, b, c = group["ns_coefficients"]
    x = updates.bfloat16()
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=group["eps"])
    for _ in range(group["ns_steps"]):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


def _muon_lr_ratio(adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's lr adjustment for a matrix of this shape (rows, columns)."""
    rows, cols = shape[:2]
    if adjust_lr_fn in (None, "original"):
        return math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return 1.0


def _muon(model: torch.nn.Module, cfg: DictConfig, device: torch.device) -> CombinedOptimizer:
    matrices = muon_matrices(model)
    ids = {id(p) for p in matrices}
    rest = [p for p in _trainable(model) if id(p) not in ids]
    muon = StackedMuon(
        matrices,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        ns_steps=cfg.ns_steps,
        adjust_lr_fn=cfg.adjust_lr_fn,
    )
    groups = _param_groups(rest, cfg.adamw_weight_decay)
    for group in groups:
        group["lr_scale"] = cfg.adamw_lr / cfg.lr
    adamw = torch.optim.AdamW(
        groups, lr=cfg.adamw_lr, betas=tuple(cfg.adamw_betas), eps=cfg.adamw_eps
    )
    return CombinedOptimizer(muon, adamw)


def _pytorch_optimizer(name: str) -> Any:
    import pytorch_optimizer

    return getattr(pytorch_optimizer, name)


def _lion(model: torch.nn.Module, cfg: DictConfig, device: torch.device) -> torch.optim.Optimizer:
    lion = _pytorch_optimizer("Lion")
    return lion(
        _param_groups(_trainable(model), cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas)
    )


SHAMPOO_GRAFTS = ("adagrad", "rmsprop", "sgd")


def _shampoo(
    model: torch.nn.Module, cfg: DictConfig, device: torch.device
) -> torch.optim.Optimizer:
    from pytorch_optimizer.optimizer.utils.graft import LayerWiseGrafting

    shampoo = _pytorch_optimizer("ScalableShampoo")
    return shampoo(
        _param_groups(_trainable(model), cfg.weight_decay),
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        decoupled_weight_decay=True,
        graft_type=LayerWiseGrafting[cfg.graft.upper()],
        start_preconditioning_step=cfg.start_preconditioning_step,
        preconditioning_compute_steps=cfg.preconditioning_compute_steps,
    )


def _soap(model: torch.nn.Module, cfg: DictConfig, device: torch.device) -> torch.optim.Optimizer:
    soap = _pytorch_optimizer("SOAP")
    return soap(
        _param_groups(_trainable(model), cfg.weight_decay),
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        eps=cfg.eps,
        precondition_frequency=cfg.precondition_frequency,
    )


def _schedulefree_adamw(
    model: torch.nn.Module, cfg: DictConfig, device: torch.device
) -> torch.optim.Optimizer:
    schedulefree = _pytorch_optimizer("ScheduleFreeAdamW")
    return schedulefree(
        _param_groups(_trainable(model), cfg.weight_decay),
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        eps=cfg.eps,
        warmup_steps=cfg.warmup_steps,
    )


OPTIMIZERS: dict[str, Callable[[torch.nn.Module, DictConfig, torch.device], Any]] = {
    "sgd": _sgd,
    "adamw": _adamw,
    "adam": _adamw,  # configs/optim/adam.yaml: adamw with weight_decay 0
    "adafactor": _adafactor,
    "muon": _muon,
    "lion": _lion,
    "shampoo": _shampoo,
    "soap": _soap,
    "schedulefree_adamw": _schedulefree_adamw,
}
NEEDS_EXTRA = ("lion", "shampoo", "soap", "schedulefree_adamw")  # from pytorch-optimizer


def check_optim(cfg: DictConfig) -> None:
    """Raise ConfigError for an unknown optimizer, a missing package or a bad value."""
    if cfg.name not in OPTIMIZERS:
        raise ConfigError(f"optim.name={cfg.name!r} is not one of {sorted(OPTIMIZERS)}")
    if cfg.name in NEEDS_EXTRA and importlib.util.find_spec("pytorch_optimizer") is None:
        raise ConfigError(
            f"optim={cfg.name} needs the pytorch-optimizer package: pip install "
            "'nanolab[optimizers]' (or pip install 'pytorch-optimizer>=4,<5')"
        )
    for key in ("lr", "adamw_lr"):
        if key in cfg and not cfg[key] > 0:
            raise ConfigError(f"optim.{key}={cfg[key]} must be > 0")
    for key in ("weight_decay", "adamw_weight_decay"):
        if key in cfg and cfg[key] < 0:
            raise ConfigError(f"optim.{key}={cfg[key]} must be >= 0")
    for key in ("betas", "adamw_betas"):
        if key in cfg and (len(cfg[key]) != 2 or not all(0 <= b < 1 for b in cfg[key])):
            raise ConfigError(f"optim.{key}={list(cfg[key])} must be two numbers in [0, 1)")
    if cfg.name in ("adamw", "adam") and cfg.fused not in ("auto", True, False):
        raise ConfigError(f"optim.fused={cfg.fused!r} must be auto, true or false")
    if cfg.name == "shampoo" and cfg.graft not in SHAMPOO_GRAFTS:
        raise ConfigError(f"optim.graft={cfg.graft!r} must be one of {', '.join(SHAMPOO_GRAFTS)}")
    if cfg.name == "muon" and cfg.adjust_lr_fn not in (None, "original", "match_rms_adamw"):
        raise ConfigError(
            f"optim.adjust_lr_fn={cfg.adjust_lr_fn!r} must be null, original or match_rms_adamw"
        )


def build_optimizer(
    model: torch.nn.Module, cfg: DictConfig, device: torch.device
) -> torch.optim.Optimizer | CombinedOptimizer:
    """The optimizer named by `optim.name`, with decoupled weight decay on 2D+ parameters (and
    μP's per-group rules for a model with parametrization=mup, src/nanolab/mup.py)."""
    check_optim(cfg)
    if _mup(model):
        check_mup(model.config.to_dict(), cfg)
    return OPTIMIZERS[cfg.name](model, cfg, device)


def state_classes() -> list[type]:
    """The classes (beyond tensors and Python values) that optimizer states in a checkpoint may
    hold: ScalableShampoo keeps its preconditioners as objects of pytorch-optimizer's. Loading
    allows these and nothing else, so checkpoints still load with `weights_only=True`."""
    if importlib.util.find_spec("pytorch_optimizer") is None:
        return []
    from pytorch_optimizer.optimizer.utils import graft, partition, preconditioner

    grafts = [
        graft.LayerWiseGrafting,
        graft.Graft,
        graft.SGDGraft,
        graft.SQRTNGraft,
        graft.AdaGradGraft,
        graft.RMSPropGraft,
    ]
    return [
        *grafts,
        partition.PreConditionerType,
        partition.BlockPartitioner,
        preconditioner.PreConditioner,
    ]


def set_optimizer_mode(optimizer: Any, train: bool) -> None:
    """Schedule-free optimizers train at one point and evaluate at another (the averaged
    weights): `train()` before training steps, `eval()` before evaluating or saving. Both are
    idempotent; optimizers without them are left alone."""
    mode = getattr(optimizer, "train" if train else "eval", None)
    if callable(mode):
        mode()


# --- schedules ------------------------------------------------------------------------------


def _warmup(step: int, warmup_iters: int) -> float:
    return (step + 1) / (warmup_iters + 1) if step < warmup_iters else 1.0


def _cosine(cfg: DictConfig, base_lr: float) -> Callable[[int], float]:
    """Linear warmup, then cosine decay to min_lr at decay_iters, then min_lr."""
    if not cfg.min_lr >= 0:
        raise ConfigError(
            f"schedule.min_lr={cfg.min_lr} must be >= 0 (a negative learning rate climbs the loss)"
        )

    def lr_at(step: int) -> float:
        if step < cfg.warmup_iters:
            return base_lr * _warmup(step, cfg.warmup_iters)
        if step >= cfg.decay_iters:
            return cfg.min_lr
        progress = (step - cfg.warmup_iters) / max(1, cfg.decay_iters - cfg.warmup_iters)
        return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (base_lr - cfg.min_lr)

    return lr_at


def _constant(cfg: DictConfig, base_lr: float) -> Callable[[int], float]:
    """Linear warmup, then the base learning rate."""
    return lambda step: base_lr * _warmup(step, cfg.warmup_iters)


DECAY_SHAPES: dict[str, Callable[[float], float]] = {
    "linear": lambda p: 1.0 - p,
    "cosine": lambda p: 0.5 * (1.0 + math.cos(math.pi * p)),
    "1-sqrt": lambda p: 1.0 - math.sqrt(p),
}


def wsd_multiplier(
    step: int,
    warmup_iters: int,
    total_iters: int,
    decay_frac: float,
    decay_shape: str,
    final_frac: float,
) -> float:
    """Warmup-stable-decay: (step+1)/W over the first W steps, 1 through the stable phase, then
    from 1 down to final_frac over the last decay_frac of total_iters (MiniCPM, nanochat)."""
    decay_iters = round(decay_frac * total_iters)
    decay_start = total_iters - decay_iters
    warmup = (step + 1) / warmup_iters if step < warmup_iters else 1.0
    if step < decay_start:
        return warmup
    progress = min(1.0, (step - decay_start) / max(1, decay_iters))
    return min(warmup, final_frac + (1.0 - final_frac) * DECAY_SHAPES[decay_shape](progress))


def _wsd(cfg: DictConfig, base_lr: float) -> Callable[[int], float]:
    """Linear warmup, flat, then a decay over the last `decay_frac` of the run to `final_frac`."""
    if not cfg.total_iters > 0:
        raise ConfigError(
            f"schedule.total_iters={cfg.total_iters} must be > 0 (the "
            "steps the schedule spans; by default trainer.max_iters)"
        )
    if not 0 <= cfg.decay_frac <= 1:
        raise ConfigError(f"schedule.decay_frac={cfg.decay_frac} must be in [0, 1]")
    if not 0 <= cfg.final_frac <= 1:
        raise ConfigError(f"schedule.final_frac={cfg.final_frac} must be in [0, 1]")
    if cfg.decay_shape not in DECAY_SHAPES:
        raise ConfigError(
            f"schedule.decay_shape={cfg.decay_shape!r} must be one of {', '.join(DECAY_SHAPES)}"
        )
    args = (cfg.warmup_iters, cfg.total_iters, cfg.decay_frac, cfg.decay_shape, cfg.final_frac)
    return lambda step: base_lr * wsd_multiplier(step, *args)


SCHEDULES = {"cosine": _cosine, "constant": _constant, "wsd": _wsd}


def build_schedule(cfg: DictConfig, base_lr: float) -> Callable[[int], float]:
    """step -> learning rate for the schedule named by `schedule.name`."""
    if cfg.name not in SCHEDULES:
        raise ConfigError(f"schedule.name={cfg.name!r} is not one of {sorted(SCHEDULES)}")
    if cfg.warmup_iters < 0:
        raise ConfigError(f"schedule.warmup_iters={cfg.warmup_iters} must be >= 0")
    return SCHEDULES[cfg.name](cfg, base_lr)
