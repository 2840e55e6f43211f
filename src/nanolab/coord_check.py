"""Coordinate check (Tensor Programs V, arXiv 2203.03466, Figure 5; microsoft/mup's coord_check):
is a parametrization's training stable as width grows?

    python -m nanolab.coord_check                          # sp, mup and the broken control
    python -m nanolab.coord_check optim=sgd optim.lr=0.5

Models of growing width (fixed depth and head size, so heads are added) train for a few steps on
one fixed batch at a large constant learning rate, without clipping or weight decay. At each step
the forward pass records, per module (the embedding's output, each block's attention and MLP
outputs and its output, the logits), the mean |activation| and the mean |change| since step 1 on
that batch. The slope of log value against log width says how it scales: 0 is width-independent
(what μP promises for every module, at every step), > 0 blows up. A parametrization passes when
every slope from step 2 on lies within the tolerance; the logits only may fall with width (μP's
output starts at O(1/sqrt(width)), and its first updates carry that term).

The slopes are those of finite widths: a module whose output passes near zero in some step
(at a larger lr, a block's attention output does in step 4 of the wide models) has a log-slope
that means nothing, and the smallest widths carry 1/sqrt(width) corrections. The defaults
(lr 1e-3, widths 64-1024) avoid both; docs/choosing_size.md shows what they look like.

`mup_sp_lr` is μP's init and multipliers with every group at the base learning rate (the
classic mistake of leaving out Adam's lr/m for the hidden matrices): a negative control that
must fail.

It writes coord_check.csv (one row per parametrization, width, seed, step and module),
coord_check_slopes.csv and coord_check.png (a panel per parametrization and quantity, a line per
step, the worst module's slope in the title) into `out`.
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from torch.nn import functional as F

from nanolab import ConfigError, exit_on_config_error
from nanolab.atomic import atomic_path, unwritable
from nanolab.distributed import World
from nanolab.model import GPT, GPTConfig
from nanolab.optim import build_optimizer
from nanolab.run import load_data

log = logging.getLogger("nanolab.coord_check")

# what each name builds: (model.parametrization, μP's per-group learning rates applied)
VARIANTS = {"sp": ("sp", True), "mup": ("mup", True), "mup_sp_lr": ("mup", False)}
QUANTITIES = ("abs", "change")  # mean |x_t| and mean |x_t - x_1|


@dataclass(frozen=True, kw_only=True)
class Record:
    parametrization: str
    width: int
    seed: int
    step: int
    module: str
    abs: float
    change: float


def _watched(model: GPT) -> dict[str, torch.nn.Module]:
    """The modules whose outputs are recorded, by name."""
    modules = {"embedding": model.transformer.drop}
    for i, block in enumerate(model.transformer.h):
        modules |= {f"h{i}.attn": block.attn, f"h{i}.mlp": block.mlp, f"h{i}.out": block}
    return modules


def train_and_record(
    config: GPTConfig,
    optim: DictConfig,
    *,
    mup_lr: bool,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    seed: int,
) -> dict[tuple[int, str], tuple[float, float]]:
    """(step, module) -> (mean |x_t|, mean |x_t - x_1|) over `steps` steps on the batch (x, y)."""
    torch.manual_seed(seed)
    model = GPT(config)
    optimizer = build_optimizer(model, optim, torch.device("cpu"))
    for group in optimizer.param_groups:
        group["lr"] = optim.lr * (group.get("lr_scale", 1.0) if mup_lr else 1.0)
    outputs: dict[str, torch.Tensor] = {}
    hooks = [
        module.register_forward_hook(
            lambda _m, _i, out, name=name: outputs.__setitem__(name, out.detach())
        )
        for name, module in _watched(model).items()
    ]
    first: dict[str, torch.Tensor] = {}
    result = {}
    try:
        for step in range(1, steps + 1):
            logits = model(x)
            outputs["logits"] = logits.detach()
            for name, out in outputs.items():
                first.setdefault(name, out)
                result[step, name] = (
                    out.abs().mean().item(),
                    (out - first[name]).abs().mean().item(),
                )
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        for hook in hooks:
            hook.remove()
    return result


def coordinate_check(
    x: torch.Tensor,
    y: torch.Tensor,
    vocab_size: int,
    *,
    widths: list[int],
    parametrizations: list[str],
    optim: DictConfig,
    n_layer: int = 2,
    head_dim: int = 16,
    steps: int = 5,
    seeds: tuple[int, ...] = (0, 1),
) -> list[Record]:
    """Every record of the check: each parametrization, width and seed trained `steps` steps on
    (x, y). μP's base shape is the first width and `head_dim`."""
    records = []
    for name in parametrizations:
        parametrization, mup_lr = VARIANTS[name]
        for width in widths:
            config = GPTConfig(
                n_layer=n_layer,
                n_head=width // head_dim,
                n_embd=width,
                block_size=x.size(1),
                vocab_size=vocab_size,
                bias=False,
                parametrization=parametrization,
                mup_base_width=widths[0] if parametrization == "mup" else None,
                mup_base_head_dim=head_dim if parametrization == "mup" else None,
            )
            for seed in seeds:
                recorded = train_and_record(
                    config, optim, mup_lr=mup_lr, x=x, y=y, steps=steps, seed=seed
                )
                records += [
                    Record(
                        parametrization=name,
                        width=width,
                        seed=seed,
                        step=step,
                        module=module,
                        abs=values[0],
                        change=values[1],
                    )
                    for (step, module), values in recorded.items()
                ]
                log.info("%s width %d seed %d: done", name, width, seed)
    return records


def slope(widths: list[float], values: list[float]) -> float:
    """The least-squares slope of log value against log width."""
    return float(np.polyfit(np.log(widths), np.log(np.maximum(values, 1e-30)), 1)[0])


def slopes(records: list[Record]) -> dict[tuple[str, str, int, str], float]:
    """(parametrization, quantity, step, module) -> slope over widths of the seeds' mean (the
    change at step 1 is zero by definition and has none)."""
    means: dict[tuple[str, str, int, str], dict[int, list[float]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for r in records:
        for q in QUANTITIES:
            means[r.parametrization, q, r.step, r.module][r.width].append(getattr(r, q))
    return {
        key: slope(list(by_width), [sum(v) / len(v) for v in by_width.values()])
        for key, by_width in means.items()
        if not (key[1] == "change" and key[2] == 1)
    }


def criterion(module: str, value: float) -> float:
    """A slope as the width-stability test reads it: the logits may fall with width (μP's
    output starts at O(1/sqrt(width)) and its first updates carry that term), so only their
    growth counts; every other module's slope counts either way."""
    return max(value, 0.0) if module == "logits" else value


def worst_slope(fitted: dict, parametrization: str, quantity: str | None = None) -> float:
    """The slope furthest from 0, as `criterion` reads it, of any module (and quantity, unless
    one is named) from step 2: within the tolerance, the parametrization is width-stable."""
    return max(
        (
            criterion(module, s)
            for (p, q, step, module), s in fitted.items()
            if p == parametrization and quantity in (None, q) and step >= 2
        ),
        key=abs,
    )


def write_csv(records: list[Record], fitted: dict, out: Path) -> None:
    with atomic_path(out / "coord_check.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["parametrization", "width", "seed", "step", "module", "abs", "change"])
        for r in records:
            writer.writerow(
                [
                    r.parametrization,
                    r.width,
                    r.seed,
                    r.step,
                    r.module,
                    f"{r.abs:.6g}",
                    f"{r.change:.6g}",
                ]
            )
    with atomic_path(out / "coord_check_slopes.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["parametrization", "quantity", "step", "module", "slope"])
        for (p, q, step, module), s in sorted(fitted.items()):
            writer.writerow([p, q, step, module, f"{s:.4f}"])


def plot(records: list[Record], fitted: dict, path: Path) -> None:
    """One panel per parametrization and quantity: mean over modules' log-value against width,
    a line per step (TP5 Figure 5 plots each module; the csv has them all)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r.parametrization for r in records))
    modules = list(dict.fromkeys(r.module for r in records))
    steps = sorted({r.step for r in records})
    fig, axes = plt.subplots(
        len(QUANTITIES), len(names), figsize=(4.2 * len(names), 7), squeeze=False
    )
    colors = plt.cm.viridis([i / max(1, len(steps) - 1) for i in range(len(steps))])
    for col, name in enumerate(names):
        for row, q in enumerate(QUANTITIES):
            ax = axes[row][col]
            for module in modules:
                for step, color in zip(steps, colors, strict=True):
                    if q == "change" and step == 1:
                        continue
                    points = defaultdict(list)
                    for r in records:
                        if (r.parametrization, r.module, r.step) == (name, module, step):
                            points[r.width].append(getattr(r, q))
                    widths = sorted(points)
                    ax.plot(
                        widths,
                        [sum(points[w]) / len(points[w]) for w in widths],
                        color=color,
                        alpha=0.6,
                        marker=".",
                        label=f"step {step}" if module == modules[-1] else None,
                    )
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("width (n_embd)")
            ax.set_ylabel("mean |x|" if q == "abs" else "mean |x_t - x_1|")
            ax.set_title(f"{name}: {q}, worst slope {worst_slope(fitted, name, q):+.2f}")
            if row == 0 and col == 0:
                ax.legend(fontsize=7)
    fig.suptitle("coordinate check: every module, a line per step (slope 0: width-independent)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def check_cfg(cfg: DictConfig) -> None:
    widths = list(cfg.widths)
    if len(widths) < 2 or widths != sorted(set(widths)):
        raise ConfigError(f"widths={widths} must be two or more increasing widths")
    if any(w % cfg.head_dim for w in widths):
        raise ConfigError(f"widths={widths} must be multiples of head_dim={cfg.head_dim}")
    unknown = [p for p in cfg.parametrizations if p not in VARIANTS]
    if unknown or not cfg.parametrizations:
        raise ConfigError(
            f"parametrizations={list(cfg.parametrizations)} must be some of {', '.join(VARIANTS)}"
        )
    for key in ("steps", "n_layer", "batch_size", "block_size"):
        if not cfg[key] >= (2 if key == "steps" else 1):
            raise ConfigError(f"{key}={cfg[key]} must be >= {2 if key == 'steps' else 1}")
    if not cfg.seeds:
        raise ConfigError("seeds must list at least one seed")


def run_check(cfg: DictConfig) -> dict[str, float]:
    """The check as configured; returns each parametrization's worst slope from step 2."""
    check_cfg(cfg)
    out = Path(cfg.out)
    if problem := unwritable(out):
        raise ConfigError(f"out={out}: {problem}")
    data = load_data(cfg.data, World())
    generator = torch.Generator().manual_seed(cfg.batch_seed)
    starts = torch.randint(
        len(data.train) - cfg.block_size - 1, (cfg.batch_size,), generator=generator
    ).tolist()
    windows = torch.stack(
        [torch.as_tensor(data.train[s : s + cfg.block_size + 1].astype("int64")) for s in starts]
    )
    records = coordinate_check(
        windows[:, :-1],
        windows[:, 1:],
        data.vocab_size,
        widths=list(cfg.widths),
        parametrizations=list(cfg.parametrizations),
        optim=cfg.optim,
        n_layer=cfg.n_layer,
        head_dim=cfg.head_dim,
        steps=cfg.steps,
        seeds=tuple(cfg.seeds),
    )
    fitted = slopes(records)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(records, fitted, out)
    plot(records, fitted, out / "coord_check.png")
    worst = {p: worst_slope(fitted, p) for p in cfg.parametrizations}
    for p, s in worst.items():
        verdict = "width-stable" if abs(s) <= cfg.tolerance else "NOT width-stable"
        log.info(
            "%s: worst slope from step 2 %+.3f: %s (tolerance %g)", p, s, verdict, cfg.tolerance
        )
    log.info("wrote %s", out / "coord_check.png")
    return worst


@hydra.main(version_base="1.3", config_path="pkg://nanolab.configs", config_name="coord_check")
def main(cfg: DictConfig) -> None:
    with exit_on_config_error(log):
        run_check(cfg)


if __name__ == "__main__":
    main()
