"""Prune a trained model (and quantize it), and measure what that buys: accuracy, memory, time.

    python -m nanolab.prune checkpoint=outputs/2026-11-25/10-00-00-3fa2c1
    python -m nanolab.prune checkpoint=<run> "amounts=[0,0.5,0.9]" finetune_steps=200
    python -m nanolab.prune checkpoint=<run> method=imp "amounts=[0.5,0.75,0.875]" rewind_step=100
    python -m nanolab.prune checkpoint=<run> method=structured "amounts=[0,0.5]" measure=true

For each amount (a fraction, 0 the model as it is):
- method=magnitude: the smallest-magnitude weights of the prunable matrices (nanolab.sparsity:
  every linear matrix but a tied head; the embeddings with prune_embeddings) are zeroed, over
  all of them together (scope=global) or each alone (scope=layer); then `finetune_steps` at a
  constant finetune_lr with the pruned weights held at zero.
- method=imp: iterative magnitude pruning with rewinding (Frankle et al. 2019-2020), one round
  per amount, in increasing order: prune the latest trained weights to that amount, rewind the
  survivors to the run's state after `rewind_step` steps (weights, optimizer moments, data
  order: recomputed from the run's config and seed, exact on the machine that trained it), and
  train them under the mask to the run's trainer.max_iters on its own schedule.
- method=structured: remove that fraction of every layer's attention heads and MLP neurons,
  those of smallest weight norm (nanolab.structured), giving a smaller dense model; then
  `finetune_steps` as above. Each is written as structured-<amount>.pt into `out`, a checkpoint
  that nanolab.evaluate, sample and init_from take like any other.

Every model is scored on the whole val split (ce, calibrated ce, accuracy). With int8=true each
is scored again with int8 linear weights (nanolab.quantize), as a row of its own; with
measure=true each row gets its bytes in memory and on disk (dense, and as sparse CSR), ms per
forward pass and sampling tokens/s at batch 1 and measure_batch (nanolab.footprint), timed in
this process: let nothing else run meanwhile. It writes prune.md, prune.csv, prune.json and
prune.png (val/ce against sparsity) into `out` (default: <run dir>/prune/), checked writable
before any work. The data is the run's prepared data, read only, found as nanolab.evaluate finds
it (or data.dir=); nothing is prepared or downloaded, whatever the checkpoint's config says.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from nanolab import ConfigError, exit_on_config_error
from nanolab.atomic import atomic_path, unwritable, write_json
from nanolab.checkpoint import load_checkpoint, save_checkpoint
from nanolab.config import PruneKeys, check_entry_types
from nanolab.data import trained_data
from nanolab.distributed import World
from nanolab.footprint import measure
from nanolab.frequency import loss_class_counts, scored_loss
from nanolab.losses import head_chunk_tokens
from nanolab.metrics import evaluate_split
from nanolab.model import GPT
from nanolab.quantize import check_quantize, int8_weights
from nanolab.run import Run, build_run, set_lr, train_step
from nanolab.runtime import Runtime, pick_device
from nanolab.sparsity import SCOPES, apply_masks, magnitude_masks, prunable, zero_fraction
from nanolab.structured import kept_groups, removed_counts, shrink
from nanolab.weights import Weights, load_into, model_from_weights, read_weights

log = logging.getLogger("nanolab.prune")

METHODS = ("magnitude", "imp", "structured")
METRICS = ("val/ce", "val/ce_calibrated", "val/acc")


class Pruner:
    """What every method shares: the checkpoint, its data and training config, the device,
    and scoring (and measuring) a model into a report row."""

    def __init__(self, cfg: DictConfig, weights: Weights, out: Path) -> None:
        self.cfg, self.weights, self.out = cfg, weights, out
        run = weights.run
        self.data = trained_data(
            run.data_meta, cfg.data.dir, run.data_dir, f"checkpoint={weights.path}"
        )
        self.runtime = Runtime.create(pick_device(cfg.device), "float32", False)
        self.train_cfg = run.config
        self.train_cfg.init_from = None  # the checkpoint's weights are loaded instead
        self.train_cfg.loss = scored_loss(run.config.loss)  # no file the checkpoint names
        # the checkpoint's own gradual pruning and penalties are not continued
        self.train_cfg.sparsity = {
            **self.train_cfg.sparsity,
            "final": 0.0,
            "l1": 0.0,
            "group_lasso": 0.0,
        }

    def finetune_cfg(self, model: dict[str, Any] | None = None) -> DictConfig:
        """The checkpoint's training setup at a constant finetune_lr, no warmup (and a model of
        another shape when given)."""
        cfg = copy.deepcopy(self.train_cfg)
        cfg.schedule = {"name": "constant", "warmup_iters": 0}
        cfg.optim.lr = self.cfg.finetune_lr
        if model:
            cfg.model = {**cfg.model, **model}
        return cfg

    def run(self, cfg: DictConfig) -> Run:
        return build_run(cfg, World(), self.runtime, data=self.data)

    def score(self, model: GPT, prefix: str = "") -> dict[str, float]:
        """ce, calibrated ce and accuracy on every token of the val split."""
        training = model.training
        model.eval()
        head_chunk = head_chunk_tokens(self.train_cfg.head_chunk_tokens, model.config.vocab_size)
        loss = self.train_cfg.loss
        metrics = evaluate_split(
            model,
            self.data.val,
            loss,
            max(1, 8192 // model.config.block_size),
            head_chunk=head_chunk,
            class_counts=loss_class_counts(loss, self.data, self.runtime.device),
        )
        model.train(training)
        return {f"{prefix}{k}": metrics[k.removeprefix("val/")] for k in METRICS}

    def rows(self, row: dict[str, Any], model: GPT) -> list[dict[str, Any]]:
        """The row of `model` (its final scores as val/*, measured with measure=true) and, with
        int8=true, the row of its int8 copy."""
        row = {**row, "weights": "float32", **self.score(model), **self.measured(model)}
        rows = [row]
        if self.cfg.int8:
            small = int8_weights(copy.deepcopy(model).eval())
            rows.append(
                {
                    **{
                        k: row[k]
                        for k in ("method", "amount", "sparsity", "nonzero_params", "params")
                    },
                    "weights": "int8",
                    **self.score(small),
                    **self.measured(small),
                }
            )
        for r in rows:
            log.info(
                "%s %g (%s): sparsity %.4f, %s parameters non-zero, val/ce %.4f, acc %.4f",
                *(r[k] for k in ("method", "amount", "weights", "sparsity")),
                f"{r['nonzero_params']:,}",
                r["val/ce"],
                r["val/acc"],
            )
        return rows

    def measured(self, model: GPT) -> dict[str, float]:
        if not self.cfg.measure:
            return {}
        return measure(model.eval(), self.cfg.measure_batch, self.cfg.measure_tokens)


def counts(model: GPT, modules: dict[str, torch.nn.Module]) -> dict[str, Any]:
    """Sparsity of the pruned matrices (global and per matrix), the model's non-zero and total
    parameters (each shared tensor once)."""
    params = list(model.parameters())
    return {
        "sparsity": zero_fraction(modules),
        "per_layer": {n: float((m.weight == 0).float().mean()) for n, m in modules.items()},
        "nonzero_params": sum(int((p != 0).sum()) for p in params),
        "params": sum(p.numel() for p in params),
    }


def train_steps(
    run: Run,
    steps: range,
    desc: str,
    masks: dict[str, torch.Tensor] | None = None,
    modules: dict[str, torch.nn.Module] | None = None,
) -> None:
    """Train `run` over `steps` (the learning rate of each from its schedule: a constant one
    when fine-tuning), the masked weights held at zero, with a progress bar on a terminal."""
    for step in tqdm(steps, desc=desc, unit="step", disable=None, leave=False):
        set_lr(run, step)
        train_step(run)
        if masks is not None:
            apply_masks(modules, masks)


def magnitude(p: Pruner) -> list[dict[str, Any]]:
    """One-shot magnitude pruning of the checkpoint at each amount, then fine-tuning."""
    results = []
    for amount in p.cfg.amounts:
        run = p.run(p.finetune_cfg())  # a fresh optimizer for each amount
        load_into(run.model, p.weights, p.data.meta, "checkpoint")
        modules = prunable(run.model, p.cfg.prune_embeddings)
        masks = magnitude_masks({n: m.weight for n, m in modules.items()}, amount, p.cfg.scope)
        apply_masks(modules, masks)
        row = {"method": "magnitude", "amount": amount, **counts(run.model, modules)}
        row |= p.score(run.model, "pruned/")
        if p.cfg.finetune_steps:
            train_steps(run, range(p.cfg.finetune_steps), f"fine-tuning {amount:g}", masks, modules)
            row |= p.score(run.model, "finetuned/")
            row["finetuned/sparsity"] = zero_fraction(modules)
        results += p.rows(row, run.model)
    return results


def imp(p: Pruner) -> list[dict[str, Any]]:
    """Iterative magnitude pruning with rewinding: a round per amount."""
    max_iters = p.train_cfg.trainer.max_iters
    rounds = sum(1 for a in p.cfg.amounts if a)
    log.info(
        "method=imp: %d rounds, each retraining steps %d-%d of the run (%d steps in all)",
        rounds,
        p.cfg.rewind_step,
        max_iters,
        rounds * (max_iters - p.cfg.rewind_step),
    )
    run = p.run(p.train_cfg)  # the run's own start, from its seed
    train_steps(run, range(p.cfg.rewind_step), f"recomputing steps 0-{p.cfg.rewind_step}")
    rewind = copy.deepcopy(run.state_dict())
    load_into(run.model, p.weights, p.data.meta, "checkpoint")  # round 0: the trained weights
    modules = prunable(run.model, p.cfg.prune_embeddings)
    masks = None
    results = []
    for amount in sorted(p.cfg.amounts):
        if amount:
            weights = {n: m.weight for n, m in modules.items()}
            masks = magnitude_masks(weights, amount, p.cfg.scope, masks)
            apply_masks(modules, masks)
        row = {"method": "imp", "amount": amount, **counts(run.model, modules)}
        row |= p.score(run.model, "pruned/")
        if amount:
            run.load_state_dict(copy.deepcopy(rewind))
            apply_masks(modules, masks)
            steps = range(p.cfg.rewind_step, max_iters)
            train_steps(run, steps, f"IMP round to {amount:g}", masks, modules)
            row |= p.score(run.model, "finetuned/") | {"finetuned/sparsity": zero_fraction(modules)}
        results += p.rows(row, run.model)
    return results


def structured(p: Pruner) -> list[dict[str, Any]]:
    """Heads and neurons removed at each amount: smaller dense models, each saved."""
    # shrink copies what it keeps: the checkpoint's model serves every amount
    model = model_from_weights(p.weights, p.data.meta, "checkpoint").to(p.runtime.device)
    before = sum(m.weight.numel() for m in prunable(model, p.cfg.prune_embeddings).values())
    results = []
    for amount in p.cfg.amounts:
        small = shrink(model, kept_groups(model, amount))
        modules = prunable(small, p.cfg.prune_embeddings)
        row = {"method": "structured", "amount": amount, **counts(small, modules)}
        row["sparsity"] = 1 - sum(m.weight.numel() for m in modules.values()) / before
        row |= p.score(small, "pruned/")
        if p.cfg.finetune_steps:
            c = small.config
            shape = {"n_head": c.n_head, "head_dim": c.head_dim, "mlp_hidden": c.mlp_hidden}
            run = p.run(p.finetune_cfg(shape))
            run.model.load_state_dict(small.state_dict())
            train_steps(run, range(p.cfg.finetune_steps), f"fine-tuning {amount:g}")
            small = run.model
            row |= p.score(small, "finetuned/") | {"finetuned/sparsity": row["sparsity"]}
        row["checkpoint"] = str(save_smaller(p, small, amount))
        results += p.rows(row, small)
    return results


def save_smaller(p: Pruner, model: GPT, amount: float) -> Path:
    """structured-<amount>.pt in `out`: the checkpoint's run record with the smaller model (no
    optimizer state: it evaluates, samples and starts runs, it does not resume)."""
    state = load_checkpoint(p.weights.path)
    c = model.config
    state["config"]["model"] |= {
        "n_head": c.n_head,
        "head_dim": c.head_dim,
        "mlp_hidden": c.mlp_hidden,
    }
    state |= {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model_config": c.to_dict(),
        "optimizer": {},
        "sparsity": None,
    }
    state.pop("format")
    path = p.out / f"structured-{amount:g}.pt"
    p.out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, state)
    return path


def check(cfg: DictConfig) -> None:
    check_entry_types(cfg, PruneKeys)
    amounts = list(cfg.amounts)
    if not amounts or any(not 0 <= a < 1 for a in amounts):
        raise ConfigError(f"amounts={amounts} must be fractions in [0, 1)")
    if cfg.method not in METHODS:
        raise ConfigError(f"method={cfg.method!r} must be one of {', '.join(METHODS)}")
    if cfg.scope not in SCOPES:
        raise ConfigError(f"scope={cfg.scope!r} must be one of {', '.join(SCOPES)}")
    if cfg.finetune_steps < 0 or not cfg.finetune_lr > 0:
        raise ConfigError(
            f"finetune_steps={cfg.finetune_steps} must be "
            f">= 0 and finetune_lr={cfg.finetune_lr} > 0"
        )
    if cfg.measure_batch < 1 or cfg.measure_tokens < 1:
        raise ConfigError(
            f"measure_batch={cfg.measure_batch} and "
            f"measure_tokens={cfg.measure_tokens} must be >= 1"
        )
    check_quantize("int8" if cfg.int8 else None)


def check_method(cfg: DictConfig, weights: Weights) -> None:
    """What the method needs of the checkpoint, checked before any work."""
    if cfg.method == "structured":
        config = model_from_weights(weights, weights.run.data_meta, "checkpoint").config
        for amount in cfg.amounts:
            removed_counts(config, amount)
    if cfg.method == "imp":
        if weights.run.config.init_from is not None:
            raise ConfigError(
                f"method=imp recomputes the first rewind_step={cfg.rewind_step} steps of the "
                f"run from its seed, but checkpoint={weights.path} started from init_from "
                "weights, which nanolab.prune does not read; use method=magnitude"
            )
        max_iters = weights.run.config.trainer.max_iters
        if not 0 <= cfg.rewind_step < max_iters:
            raise ConfigError(
                f"rewind_step={cfg.rewind_step} must lie in [0, trainer.max_iters={max_iters}) "
                "of the checkpoint's run"
            )


def prune_run(cfg: DictConfig) -> list[dict[str, Any]]:
    """Prune the checkpoint at each amount by the configured method and write the report."""
    check(cfg)
    weights = read_weights(cfg.checkpoint, "checkpoint")
    if weights.run is None:
        raise ConfigError(
            f"checkpoint={cfg.checkpoint} holds a {weights.source}, not "
            "a nanolab run: nanolab.prune fine-tunes with the run's "
            "own config; give a nanolab run directory or checkpoint"
        )
    check_method(cfg, weights)
    out = Path(cfg.out) if cfg.out else weights.path.parent / "prune"
    reason = unwritable(out)
    if reason:
        raise ConfigError(
            f"the report cannot be written to {out} ({reason}); choose a writable folder with out="
        )
    pruner = Pruner(cfg, weights, out)
    results = {"magnitude": magnitude, "imp": imp, "structured": structured}[cfg.method](pruner)
    write_report(results, out, weights.path, cfg)
    return results


def write_report(
    results: list[dict[str, Any]], out: Path, checkpoint: Path, cfg: DictConfig
) -> None:
    """prune.json (everything, per layer too), prune.csv, prune.md and prune.png."""
    out.mkdir(parents=True, exist_ok=True)
    settings = OmegaConf.to_container(cfg, resolve=True)
    write_json(
        out / "prune.json",
        {"checkpoint": str(checkpoint), "settings": settings, "results": results},
    )
    columns = [c for c in _columns(results) if any(c in r for r in results)]
    with atomic_path(out / "prune.csv") as tmp:
        tmp.write_text(
            ",".join(columns)
            + "\n"
            + "".join(",".join(_csv(r.get(c)) for c in columns) + "\n" for r in results)
        )
    table = _table(results, columns)
    trained = {
        "magnitude": f"{cfg.finetune_steps} fine-tuning steps at lr {cfg.finetune_lr:g}",
        "structured": f"{cfg.finetune_steps} fine-tuning steps at lr {cfg.finetune_lr:g}",
        "imp": f"rewound to step {cfg.rewind_step}, retrained to the run's end",
    }[cfg.method]
    lines = [
        f"# Pruning {checkpoint}\n",
        f"method={cfg.method}, scope={cfg.scope}; after pruning: {trained}. val/* on the whole "
        "val split, of the final model of each row.\n",
        *table,
        "",
        "Per-layer sparsity: prune.json.",
    ]
    with atomic_path(out / "prune.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    _plot(results, out / "prune.png")
    print("\n".join(table))
    print(f"report: {out / 'prune.md'} (and prune.csv, prune.json, prune.png)")


def _columns(results: list[dict[str, Any]]) -> list[str]:
    stages = [f"{s}/{m}" for s in ("pruned", "finetuned") for m in METRICS]
    measured = [
        "memory_bytes",
        "disk_bytes",
        "csr_disk_bytes",
        "forward_ms",
        "sample_tok_s_b1",
        "sample_tok_s_batched",
    ]
    return [
        "method",
        "amount",
        "weights",
        "sparsity",
        "nonzero_params",
        "params",
        *METRICS,
        *stages,
        "finetuned/sparsity",
        *measured,
        "checkpoint",
    ]


def _csv(value: Any) -> str:
    return "" if value is None else repr(value) if isinstance(value, float) else str(value)


def _table(results: list[dict[str, Any]], columns: list[str]) -> list[str]:
    """The markdown table: the main columns, bytes in kB."""
    shown = [
        c
        for c in columns
        if c
        not in (
            "method",
            "params",
            "checkpoint",
            "finetuned/sparsity",
            *[f"pruned/{m}" for m in METRICS[1:]],
            *[f"finetuned/{m}" for m in METRICS],
        )
    ]

    def cell(c: str, v: Any) -> str:
        if v is None:
            return ""
        if c.endswith("_bytes"):
            return f"{v / 1000:,.0f}"
        if c == "nonzero_params":
            return f"{v:,}"
        if c == "amount":
            return f"{v:g}"
        if c.startswith("sample_tok_s") or c == "forward_ms":
            return f"{v:,.1f}"
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    names = {
        "pruned/val/ce": "val/ce right after pruning",
        "val/ce": "val/ce",
        **{c: c.replace("_bytes", " kB") for c in columns if c.endswith("_bytes")},
    }
    return [
        "| " + " | ".join(names.get(c, c) for c in shown) + " |",
        "|" + "---|" * len(shown),
        *("| " + " | ".join(cell(c, r.get(c)) for c in shown) + " |" for r in results),
    ]


def _plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.3), layout="constrained")
    floats = [r for r in results if r["weights"] == "float32"]
    x = [r["sparsity"] for r in floats]
    ax.plot(x, [r["pruned/val/ce"] for r in floats], "o-", label="right after pruning")
    if any("finetuned/val/ce" in r for r in floats):
        ax.plot(
            x,
            [r.get("finetuned/val/ce") for r in floats],
            "o-",
            label="after training under the mask",
        )
    int8 = [r for r in results if r["weights"] == "int8"]
    if int8:
        ax.plot(
            [r["sparsity"] for r in int8], [r["val/ce"] for r in int8], "x", label="int8 weights"
        )
    ax.set_xlabel("fraction of the prunable weights removed")
    ax.set_ylabel("val/ce (nats/token, whole val split)")
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
