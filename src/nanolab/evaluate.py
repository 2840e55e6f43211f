"""Evaluate a checkpoint on a whole split, the same way for every training loss.

    python -m nanolab.evaluate checkpoint=outputs/2026-11-23/21-00-00

The split is cut into consecutive windows of the model's context (every token is predicted
once; the first tokens of a window see a shorter context). Prints the metrics and writes them
to evaluation_<split>.json beside the checkpoint.
"""

from __future__ import annotations

import contextlib
import logging

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from nanolab import ConfigError, exit_on_config_error
from nanolab.atomic import write_json
from nanolab.checkpoint import checkpoint_file, load_model
from nanolab.config import EvaluateKeys, check_entry_types
from nanolab.data import TokenData
from nanolab.losses import get_loss, head_chunk_tokens
from nanolab.metrics import TokenTotals, update_totals
from nanolab.runtime import Runtime, pick_device

log = logging.getLogger("nanolab.evaluate")


@torch.no_grad()
def evaluate_split(
    model: torch.nn.Module, tokens: np.ndarray, loss_cfg: DictConfig, batch_size: int, head_chunk: int = 0,
    autocast: contextlib.AbstractContextManager | None = None,
) -> dict[str, float]:
    """Metrics over every token of `tokens`, in consecutive windows of the model's context; with
    head_chunk > 0 the logits of that many tokens at a time; forward passes under `autocast`."""
    block = model.config.block_size
    n_windows = (len(tokens) - 1) // block
    device = next(model.parameters()).device
    loss_fn = get_loss(loss_cfg)
    totals = TokenTotals(calibrate=True)
    for start in tqdm(range(0, n_windows, batch_size), desc="evaluating", unit="batch", disable=None):
        rows = np.arange(start, min(start + batch_size, n_windows))[:, None] * block
        window = torch.from_numpy(tokens[rows + np.arange(block + 1)].astype(np.int64)).to(device)
        with autocast or contextlib.nullcontext():
            update_totals(totals, model, window[:, :-1], window[:, 1:], loss_fn, loss_cfg, head_chunk)
    return totals.compute(device) | {"tokens": totals.tokens}


def run(cfg: DictConfig) -> dict[str, float]:
    check_entry_types(cfg, EvaluateKeys)
    if cfg.split not in ("train", "val"):
        raise ConfigError(f"split={cfg.split!r} must be train or val")
    if cfg.batch_tokens < 1:
        raise ConfigError(f"batch_tokens={cfg.batch_tokens} must be >= 1")
    path = checkpoint_file(cfg.checkpoint)
    runtime = Runtime.create(pick_device(cfg.device), cfg.dtype, False, cfg.cpu_keep_freed_memory)
    model, state = load_model(path, runtime.device)
    train_cfg = OmegaConf.create(state["config"])
    # The checkpoint's data locations (by default under NANOLAB_DATA_DIR, else ./data), unless given here.
    train_cfg.data.merge_with({k: v for k, v in cfg.data.items() if v is not None and k in train_cfg.data})
    data = TokenData.load(train_cfg.data)
    if data.meta["vocab_size"] != model.config.vocab_size:
        raise ConfigError(f"{path} was trained on another vocabulary than data/{train_cfg.data.name} now holds")
    windows_per_batch = max(1, cfg.batch_tokens // model.config.block_size)
    head_chunk = head_chunk_tokens(train_cfg.head_chunk_tokens, model.config.vocab_size)
    metrics = evaluate_split(model, getattr(data, cfg.split), train_cfg.loss, windows_per_batch, head_chunk, runtime.autocast())
    write_json(path.parent / f"evaluation_{cfg.split}.json", {"checkpoint": str(path), "step": state["step"], **metrics})
    return metrics


@hydra.main(version_base="1.3", config_path="pkg://nanolab.configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with exit_on_config_error(log):
        metrics = run(cfg)
    for key, value in metrics.items():
        print(f"{cfg.split}/{key:14s} {value:.4f}" if isinstance(value, float) else f"{cfg.split}/{key:14s} {value}")


if __name__ == "__main__":
    main()
