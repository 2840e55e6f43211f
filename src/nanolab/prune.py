"""Global magnitude pruning of a trained model, with optional fine-tuning under the mask.

    python -m nanolab.prune checkpoint=outputs/2026-11-25/10-00-00-3fa2c1
    python -m nanolab.prune checkpoint=<run> "amounts=[0,0.5,0.9]" finetune_steps=200

For each amount, the checkpoint's model loses that fraction of its linear weights (every
block's attention and MLP matrices, and an untied output head), the smallest in magnitude over
all of them together (torch.nn.utils.prune.global_unstructured with L1Unstructured), made
permanent. Embeddings and a tied head are left alone unless prune_embeddings=true (a tied head
is the token embedding, so it is then pruned with it). The report gives the sparsity reached
(global and per layer), the non-zero parameters, the val metrics right after pruning and, with
finetune_steps > 0, after that many training steps at finetune_lr with the pruned weights held
at zero. It writes prune.md, prune.csv, prune.json and prune.png (val/ce against sparsity) into
`out` (default: <run dir>/prune/), checked writable before any work. The data is the run's
prepared data, read only, found as nanolab.evaluate finds it (or data.dir=); nothing is
prepared or downloaded, whatever the checkpoint's config says.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from torch import nn
from torch.nn.utils import prune

from nanolab import ConfigError, exit_on_config_error
from nanolab.atomic import atomic_path, unwritable, write_json
from nanolab.config import PruneKeys, check_entry_types
from nanolab.data import trained_data
from nanolab.distributed import World
from nanolab.metrics import evaluate_batches
from nanolab.model import GPT
from nanolab.run import Run, build_run, train_step
from nanolab.runtime import Runtime, pick_device
from nanolab.weights import load_into, read_weights

log = logging.getLogger("nanolab.prune")


def prunable(model: GPT, prune_embeddings: bool = False) -> dict[str, nn.Module]:
    """The modules whose `weight` is pruned, by name: every Linear but a tied head (which is the
    token embedding), and with prune_embeddings the embeddings too."""
    tied = model.config.tie_embeddings
    modules = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and not (tied and m is model.lm_head)
    }
    if prune_embeddings:
        modules |= {name: m for name, m in model.named_modules() if isinstance(m, nn.Embedding)}
    return modules


def prune_globally(modules: dict[str, nn.Module], amount: float) -> dict[str, torch.Tensor]:
    """Zero the `amount` fraction of smallest-magnitude weights over all `modules` together,
    permanently; returns each module's mask (1 kept, 0 pruned)."""
    if amount > 0:
        prune.global_unstructured(
            [(m, "weight") for m in modules.values()],
            pruning_method=prune.L1Unstructured,
            amount=amount,
        )
    masks = {}
    for name, module in modules.items():
        masks[name] = (
            module.weight_mask.detach().clone() if amount > 0 else torch.ones_like(module.weight)
        )
        if amount > 0:
            # the same Parameter, its data now masked: a tied head and the optimizer keep it
            prune.remove(module, "weight")
    return masks


def sparsity(model: GPT, modules: dict[str, nn.Module]) -> dict[str, Any]:
    """Fraction of zero weights over the pruned modules and per module, and the model's non-zero
    parameter count (each shared tensor once)."""
    per_layer = {name: float((m.weight == 0).float().mean()) for name, m in modules.items()}
    zeros = sum(int((m.weight == 0).sum()) for m in modules.values())
    total = sum(m.weight.numel() for m in modules.values())
    # parameters() yields a tied tensor once
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    return {"sparsity": zeros / total, "nonzero_params": nonzero, "per_layer": per_layer}


def _apply(masks: dict[str, torch.Tensor], modules: dict[str, nn.Module]) -> None:
    with torch.no_grad():
        for name, module in modules.items():
            module.weight.mul_(masks[name])


def prune_run(cfg: DictConfig) -> list[dict[str, Any]]:
    """Prune the checkpoint at each amount (fine-tuning if asked) and write the report."""
    check_entry_types(cfg, PruneKeys)
    amounts = list(cfg.amounts)
    if not amounts or any(not 0 <= a < 1 for a in amounts):
        raise ConfigError(f"amounts={amounts} must be fractions in [0, 1)")
    if cfg.finetune_steps < 0 or not cfg.finetune_lr > 0:
        raise ConfigError(
            f"finetune_steps={cfg.finetune_steps} must be "
            f">= 0 and finetune_lr={cfg.finetune_lr} > 0"
        )
    weights = read_weights(cfg.checkpoint, "checkpoint")
    if weights.run is None:
        raise ConfigError(
            f"checkpoint={cfg.checkpoint} holds a {weights.source}, not "
            "a nanolab run: nanolab.prune fine-tunes with the run's "
            "own config; give a nanolab run directory or checkpoint"
        )
    path = weights.path
    out = Path(cfg.out) if cfg.out else path.parent / "prune"
    reason = unwritable(out)
    if reason:
        raise ConfigError(
            f"the report cannot be written to {out} ({reason}); choose a writable folder with out="
        )
    train_cfg = weights.run.config
    # Fine-tuning: the checkpoint's setup at a constant finetune_lr, no warmup.
    train_cfg.schedule = {"name": "constant", "warmup_iters": 0}
    train_cfg.optim.lr = cfg.finetune_lr
    train_cfg.init_from = None  # the checkpoint's weights are loaded below
    data = trained_data(
        weights.run.data_meta, cfg.data.dir, weights.run.data_dir, f"checkpoint={path}"
    )
    runtime = Runtime.create(pick_device(cfg.device), "float32", False)
    results = []
    for amount in amounts:
        run = build_run(train_cfg, World(), runtime, data=data)  # a fresh optimizer for each amount
        load_into(run.model, weights, data.meta, "checkpoint")
        modules = prunable(run.model, cfg.prune_embeddings)
        masks = prune_globally(modules, amount)
        result = {"amount": amount, **sparsity(run.model, modules), **_val(run, "pruned")}
        for _ in range(cfg.finetune_steps):
            train_step(run)
            _apply(masks, modules)  # pruned weights stay zero
        if cfg.finetune_steps:
            result |= _val(run, "finetuned") | {
                "finetuned/sparsity": sparsity(run.model, modules)["sparsity"]
            }
        results.append(result)
        log.info(
            "amount %.2f: sparsity %.4f, val/ce %.4f%s",
            amount,
            result["sparsity"],
            result["pruned/val/ce"],
            f" -> {result['finetuned/val/ce']:.4f} after {cfg.finetune_steps} steps"
            if cfg.finetune_steps
            else "",
        )
    write_report(results, out, path, cfg.finetune_steps)
    return results


def _val(run: Run, prefix: str) -> dict[str, float]:
    metrics = evaluate_batches(
        run.model,
        run.data,
        loss_fn=run.loss_fn,
        loss_cfg=run.cfg.loss,
        batch_size=run.cfg.trainer.batch_size,
        eval_iters=run.cfg.trainer.eval_iters,
        autocast=run.runtime.autocast(),
        head_chunk=run.head_chunk,
    )
    return {f"{prefix}/{k}": metrics[k] for k in ("val/ce", "val/ce_calibrated", "val/acc")}


def write_report(
    results: list[dict[str, Any]], out: Path, checkpoint: Path, finetune_steps: int
) -> None:
    """prune.json (everything, per layer too), prune.csv, prune.md and prune.png."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / "prune.json",
        {"checkpoint": str(checkpoint), "finetune_steps": finetune_steps, "results": results},
    )
    stages = ["pruned"] + (["finetuned"] if finetune_steps else [])
    columns = [
        "amount",
        "sparsity",
        "nonzero_params",
        *(f"{s}/{m}" for s in stages for m in ("val/ce", "val/ce_calibrated", "val/acc")),
    ]
    with atomic_path(out / "prune.csv") as tmp:
        tmp.write_text(
            ",".join(columns)
            + "\n"
            + "".join(",".join(repr(r[c]) for c in columns) + "\n" for r in results)
        )
    head = [
        "amount",
        "sparsity",
        "non-zero params",
        *(f"{m} ({s})" for s in stages for m in ("val/ce", "calibrated", "acc")),
    ]
    lines = [
        f"# Pruning {checkpoint}\n",
        "Global magnitude pruning of the linear weights; "
        f"fine-tuning: {finetune_steps} steps with the mask kept.\n",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in results:
        lines.append(
            "| "
            + " | ".join(
                [
                    f"{r['amount']:g}",
                    f"{r['sparsity']:.4f}",
                    f"{r['nonzero_params']:,}",
                    *(f"{r[c]:.4f}" for c in columns[3:]),
                ]
            )
            + " |"
        )
    lines += ["", "Per-layer sparsity: prune.json."]
    with atomic_path(out / "prune.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    _plot(results, stages, finetune_steps, out / "prune.png")
    print("\n".join(lines[2:-2]))
    print(f"report: {out / 'prune.md'} (and prune.csv, prune.json, prune.png)")


def _plot(
    results: list[dict[str, Any]], stages: list[str], finetune_steps: int, path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.3), layout="constrained")
    x = [r["sparsity"] for r in results]
    for stage in stages:
        label = (
            "right after pruning"
            if stage == "pruned"
            else f"after {finetune_steps} fine-tuning steps"
        )
        ax.plot(x, [r[f"{stage}/val/ce"] for r in results], "o-", label=label)
    ax.set_xlabel("sparsity of the pruned weights")
    ax.set_ylabel("val/ce (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


@hydra.main(version_base="1.3", config_path="pkg://nanolab.configs", config_name="prune")
def main(cfg: DictConfig) -> None:
    with exit_on_config_error(log):
        prune_run(cfg)


if __name__ == "__main__":
    main()
