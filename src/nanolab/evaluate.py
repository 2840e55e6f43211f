r"""Evaluate a checkpoint on a whole split, the same way for every training loss.

    python -m nanolab.evaluate checkpoint=outputs/2026-11-23/21-00-00
    python -m nanolab.evaluate checkpoint=../nanoGPT/out-shakespeare-char/ckpt.pt \
        data.dir=data/shakespeare_char
    python -m nanolab.evaluate checkpoint=path/to/gpt2 data.dir=data/shakespeare  # Hugging Face's

The split is cut into consecutive windows of the model's context (every token is predicted
once; the first tokens of a window see a shorter context). Prints the metrics and writes them
to evaluation_<split>.json beside the checkpoint (into a Hugging Face directory; with
quantize=int8, the linear weights int8 (nanolab.quantize), evaluation_<split>_int8.json); where that
folder is not writable, the metrics are printed only. A nanolab checkpoint brings its loss and
finds its prepared data, read only, where its run prepared it or under the data root
(NANOLAB_DATA_DIR, else ./data), unless data.dir names the folder; nothing is prepared or
downloaded, whatever the checkpoint's config says. nanoGPT's and GPT-2's weights are scored
with cross-entropy on the prepared data in data.dir, which must hold the same tokens (a folder a
nanolab run prepared: nanoGPT's shakespeare_char has the same sorted characters).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from nanolab import ConfigError, StorageError, exit_on_config_error
from nanolab.atomic import unwritable, write_json
from nanolab.config import EvaluateKeys, check_entry_types
from nanolab.data import TokenData, trained_data
from nanolab.frequency import (
    BIN_METRICS,
    check_token_freq,
    configured_bins,
    loss_class_counts,
    scored_loss,
)
from nanolab.losses import head_chunk_tokens
from nanolab.metrics import evaluate_split
from nanolab.quantize import check_quantize, int8_weights
from nanolab.runtime import Runtime, pick_device
from nanolab.weights import foreign_data_dir, model_from_weights, read_weights

log = logging.getLogger("nanolab.evaluate")


# What a model from outside nanolab (nanoGPT, GPT-2) is scored with: its own objective.
CE = {"name": "ce", "ignore_index": -1, "z_loss": 0.0}


@dataclass
class Subject:
    """What is evaluated: the file or directory its weights came from, the model, its data and
    loss, the head-chunk setting, its step."""

    source: Path
    model: torch.nn.Module
    data: TokenData
    loss: DictConfig
    head_chunk_tokens: int | str
    step: int | None


def subject(cfg: DictConfig, device: torch.device) -> Subject:
    """The weights at checkpoint= and what they are scored on: a nanolab run's own prepared data
    (read only: data.trained_data), loss and head chunk; nanoGPT's or GPT-2's weights the
    prepared data in data.dir, with cross-entropy."""
    weights = read_weights(cfg.checkpoint, "checkpoint")
    if weights.run:
        trained = weights.run
        where = f"checkpoint={weights.path}"
        data = trained_data(trained.data_meta, cfg.data.dir, trained.data_dir, where)
        loss, head_chunk = scored_loss(trained.config.loss), trained.config.head_chunk_tokens
    else:
        data = TokenData.read(foreign_data_dir(weights, cfg.data.dir, cfg.checkpoint))
        loss, head_chunk = OmegaConf.create(CE), "auto"
    model = model_from_weights(weights, data.meta, "checkpoint").to(device).eval()
    return Subject(weights.path, model, data, loss, head_chunk, weights.step)


def print_frequency_table(metrics: dict[str, float], split: str) -> None:
    """The per-bin metrics as a table: bin, classes, smallest training count, share, ce, acc."""
    names = sorted({k.split("/")[1] for k in metrics if k.startswith("freq/")})
    if not names:
        return
    print(f"{split} by token frequency (b0: the commonest classes):")
    print(f"  {'bin':5s} {'classes':>8s} {'min count':>10s} {'share':>7s} {'ce':>8s} {'acc':>7s}")
    for name in names:
        m = {key: metrics[f"freq/{name}/{key}"] for key in BIN_METRICS}
        print(
            f"  {name:5s} {m['classes']:8d} {m['min_count']:10d} {m['share']:7.4f} "
            f"{m['ce']:8.4f} {m['acc']:7.4f}",
            flush=True,
        )


def run(cfg: DictConfig) -> dict[str, float]:
    check_entry_types(cfg, EvaluateKeys)
    if cfg.split not in ("train", "val"):
        raise ConfigError(f"split={cfg.split!r} must be train or val")
    if cfg.batch_tokens < 1:
        raise ConfigError(f"batch_tokens={cfg.batch_tokens} must be >= 1")
    check_token_freq(cfg.token_freq)
    check_quantize(cfg.quantize, cfg.dtype)
    dtype = "float32" if cfg.quantize else cfg.dtype  # int8 layers compute in float32
    runtime = Runtime.create(pick_device(cfg.device), dtype, False, cfg.cpu_keep_freed_memory)
    evaluated = subject(cfg, runtime.device)
    model = int8_weights(evaluated.model) if cfg.quantize else evaluated.model
    windows_per_batch = max(1, cfg.batch_tokens // model.config.block_size)
    head_chunk = head_chunk_tokens(evaluated.head_chunk_tokens, model.config.vocab_size)
    # a Hugging Face directory holds its own
    out = evaluated.source if evaluated.source.is_dir() else evaluated.source.parent
    reason = unwritable(out)
    if reason:
        log.warning("%s is not writable (%s): the metrics are printed, not saved", out, reason)
    metrics = evaluate_split(
        model,
        getattr(evaluated.data, cfg.split),
        evaluated.loss,
        windows_per_batch,
        head_chunk=head_chunk,
        autocast=runtime.autocast(),
        freq=configured_bins(cfg.token_freq, evaluated.data),
        class_counts=loss_class_counts(evaluated.loss, evaluated.data, runtime.device),
    )
    for key, value in metrics.items():  # printed first: a failed write loses nothing
        if not key.startswith("freq/"):
            print(
                f"{cfg.split}/{key:14s} {value:.4f}"
                if isinstance(value, float)
                else f"{cfg.split}/{key:14s} {value}",
                flush=True,
            )
    print_frequency_table(metrics, cfg.split)
    if not reason:
        path = out / f"evaluation_{cfg.split}{'_' + cfg.quantize if cfg.quantize else ''}.json"
        try:
            write_json(
                path, {"checkpoint": str(evaluated.source), "step": evaluated.step, **metrics}
            )
        except OSError as e:
            raise StorageError(
                f"could not write {path} ({e.strerror or e}); the metrics are printed above"
            ) from None
    return metrics


@hydra.main(version_base="1.3", config_path="pkg://nanolab.configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with exit_on_config_error(log):
        run(cfg)


if __name__ == "__main__":
    main()
