"""Train a GPT with the loss, model, data and optimizer chosen in the Hydra config.

    python -m nanolab.train                       # nano model, shakespeare_char, cross-entropy
    python -m nanolab.train loss=mse optim.lr=3e-3
    python -m nanolab.train -m loss=ce,mse,label_smoothing

Every run writes metrics.jsonl, summary.json and checkpoints (last.pt, best.pt) to its Hydra
output directory, and logs to W&B (offline when no API key is available).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import platform
import random
import signal
import sys
import time
from pathlib import Path
from typing import Iterator

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from nanolab import EXIT_CONFIG_ERROR, ConfigError, Diverged, Interrupted
from nanolab.checkpoint import (
    capture_rng_state,
    check_compatible,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from nanolab.data import BatchSampler, TokenData
from nanolab.distributed import World, gradient_sync, launched_by_torchrun, local_grad_accum, process_group
from nanolab.losses import LossFn, chunked_head_loss, get_loss, head_chunk_tokens
from nanolab.metrics import device_peak_flops, evaluate, flops_per_token
from nanolab.model import GPT, GPTConfig
from nanolab.optim import build_optimizer, build_schedule
from nanolab.tracking import (
    RunInfo,
    Tracker,
    hydra_run_info,
    launch_time,
    record_failure,
    resolve_wandb_mode,
    safe_dirname,
)

log = logging.getLogger("nanolab.train")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
OmegaConf.register_new_resolver("safe_dirname", safe_dirname, replace=True)
OmegaConf.register_new_resolver("launch_time", launch_time, use_cache=True, replace=True)  # as Hydra's now

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str, job_num: int | None = None) -> torch.device:
    """`auto` is cuda, then mps, then cpu; anything else must be available. With several GPUs,
    job n of a multirun takes GPU n mod their number, so jobs that a parallel launcher
    (hydra/launcher=joblib) runs at once spread over the GPUs."""
    if name == "auto":
        if torch.cuda.is_available():
            if job_num is not None and torch.cuda.device_count() > 1 and not launched_by_torchrun():
                return torch.device("cuda", job_num % torch.cuda.device_count())
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available here; use device=auto or device=cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={name} but MPS is not available here; use device=auto or device=cpu")
    return device


def keep_freed_memory_for_reuse(setting: bool, device: torch.device) -> None:
    """The `cpu_keep_freed_memory` config applied: on a CPU, have glibc's malloc keep freed large
    blocks for reuse instead of unmapping them.

    By default glibc gives every block over 32 MiB back to the OS when it is freed, so on a CPU
    each logits-sized temporary at GPT-2's vocabulary (150 MB for 768 tokens) is mapped again
    and faulted in page by page: nano at vocabulary 50257 spent more time in the kernel than
    computing. Measured there: 680 -> 358 ms per step, and baby 6.3 -> 4.5 s per step for 31%
    more peak memory; nothing changes at small vocabularies (docs/benchmarks.md)."""
    if not isinstance(setting, bool):
        raise ConfigError(f"cpu_keep_freed_memory={setting!r} must be true or false")
    if not setting or device.type != "cpu" or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(M_MMAP_THRESHOLD, 2**30)
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` is bfloat16 on CUDA GPUs that support it, float16 on older ones, float32 elsewhere."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name not in DTYPES:
        raise ConfigError(f"dtype={name!r} is not one of {['auto', *DTYPES]}")
    if name == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"dtype=bfloat16 but {torch.cuda.get_device_name(device)} lacks it; use dtype=float16")
    return DTYPES[name]


def use_compile(value: bool | str, device: torch.device) -> bool:
    """`auto` compiles on CUDA only: on CPU compiling measured 1.05x faster on nano after 9.5 s
    and slower on baby (docs/benchmarks.md), while on a GPU it fuses far more and pays back."""
    if value == "auto":
        return device.type == "cuda"
    if not isinstance(value, bool):
        raise ConfigError(f"compile={value!r} must be auto, true or false")
    return value


def autocast_context(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_trainer_config(trainer: DictConfig) -> None:
    for key in ("max_iters", "batch_size", "grad_accum", "eval_interval", "eval_iters", "log_interval"):
        if not trainer[key] > 0:
            raise ConfigError(f"trainer.{key}={trainer[key]} must be > 0")
    if trainer.grad_clip < 0:
        raise ConfigError(f"trainer.grad_clip={trainer.grad_clip} must be >= 0 (0 turns clipping off)")
    if trainer.on_nonfinite not in ("stop", "skip_step"):
        raise ConfigError(f"trainer.on_nonfinite={trainer.on_nonfinite!r} must be stop or skip_step")


# Validation metrics a run can return to a sweeper, all of them lower-is-better.
OBJECTIVES = ("val/ce", "val/ce_calibrated", "val/loss", "val/bpt", "val/brier", "val/ece")


def check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ConfigError(f"objective={objective!r} must be one of {', '.join(OBJECTIVES)} (sweepers minimise it)")


def resume_checkpoint_path(resume: bool | str, run_dir: Path) -> Path | None:
    """`resume=true`: the run directory's last.pt if it exists (so re-launching a preempted
    sweep with the same sweep dir continues every job that had started); `resume=<path>`: that
    checkpoint file, or the last.pt of that run directory."""
    if resume is False or resume is None:
        return None
    if resume is True:
        return run_dir / "last.pt" if (run_dir / "last.pt").exists() else None
    path = Path(resume)
    return path / "last.pt" if path.is_dir() else path


def is_finite(loss: torch.Tensor, grad_norm: torch.Tensor, scaler: torch.amp.GradScaler) -> bool:
    """Whether a step's loss and gradient norm are finite. With float16 the GradScaler owns
    inf/nan gradients (it skips the step and lowers the scale), so only the loss counts there.
    This waits for the device, so the loop calls it only where it waits anyway."""
    return bool(torch.isfinite(loss)) and (scaler.is_enabled() or bool(torch.isfinite(grad_norm)))


def batch_loss(
    forward: torch.nn.Module, model: GPT, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, loss_cfg: DictConfig, head_chunk: int
) -> torch.Tensor:
    """The training loss of a batch through `forward` (the model, or its compiled or DDP
    wrapper); with head_chunk > 0 the output head and the loss run that many tokens at a time,
    so the logits of the whole batch never exist (large vocabularies)."""
    if not head_chunk:
        logits = forward(x)
        return loss_fn(logits.reshape(-1, logits.size(-1)), y.reshape(-1), loss_cfg)
    hidden = forward(x, head=False)
    head_params = list(model.lm_head.parameters())
    return chunked_head_loss(hidden.flatten(0, 1), y.flatten(), model.head, head_params, loss_fn, loss_cfg, head_chunk)


def train_step(
    forward: torch.nn.Module,
    model: GPT,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    sampler: BatchSampler,
    loss_fn: LossFn,
    cfg: DictConfig,
    autocast: contextlib.AbstractContextManager,
    head_chunk: int,
    accum: int,
    world: World,
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """One optimizer step over `accum` micro-batches on each rank; returns (mean loss over all
    ranks, grad norm, skipped) with the first two as tensors, so nothing waits for the device
    unless the caller logs them. With `trainer.on_nonfinite=skip_step` a non-finite step skips
    the update (`skipped`)."""
    total = torch.zeros((), device=sampler.device)
    for micro in range(accum):
        x, y = sampler.next_batch()
        with gradient_sync(forward, last_micro_step=micro == accum - 1):
            with autocast:
                loss = batch_loss(forward, model, x, y, loss_fn, cfg.loss, head_chunk)
            scaler.scale(loss / accum).backward()
        total += loss.detach()
    world.mean_(total)  # every rank sees the same loss, so every rank takes the same decisions
    scaler.unscale_(optimizer)  # so that clipping and the logged norm see true gradients
    max_norm = cfg.trainer.grad_clip if cfg.trainer.grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    skipped = cfg.trainer.on_nonfinite == "skip_step" and not is_finite(total, grad_norm, scaler)
    if not skipped:
        scaler.step(optimizer)
        scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return total / accum, grad_norm, skipped


@contextlib.contextmanager
def stop_requests() -> Iterator[list[int]]:
    """Turn SIGTERM and SIGINT (preemption, Ctrl-C) into a request that the loop honours after
    the current step; a second signal stops at once. Yields the list of signals received."""
    received: list[int] = []

    def request_stop(signum: int, frame: object) -> None:
        if received:
            raise KeyboardInterrupt
        received.append(signum)
        log.warning("signal %d: saving a checkpoint after this step, then stopping", signum)

    try:
        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # not the main thread: leave signals to whoever owns them
        previous = {}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def train(cfg: DictConfig, info: RunInfo) -> float:
    """Run training as configured, alone or as one rank under torchrun; returns the best value
    of `objective` over the evaluations (what sweepers such as Optuna minimise)."""
    check_trainer_config(cfg.trainer)
    check_objective(cfg.objective)
    resolve_wandb_mode(cfg.logger.mode)  # bad values fail now, not after data preparation
    head_chunk_tokens(cfg.head_chunk_tokens, vocab_size=0)
    with process_group(pick_device(cfg.device, info.job_num)) as (world, device):
        return train_in(world, device, cfg, info)


def train_in(world: World, device: torch.device, cfg: DictConfig, info: RunInfo) -> float:
    """train() once the process knows its device and its place in the world."""
    accum = local_grad_accum(cfg.trainer.grad_accum, cfg.trainer.fix_global_batch, world)
    dtype = pick_dtype(cfg.dtype, device)
    compiled = use_compile(cfg.compile, device)
    keep_freed_memory_for_reuse(cfg.cpu_keep_freed_memory, device)
    loss_fn = get_loss(cfg.loss)
    lr_at = build_schedule(cfg.schedule, cfg.optim.lr)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls
    seed_everything(cfg.seed)

    ckpt_path = resume_checkpoint_path(cfg.resume, info.dir)
    ckpt = load_checkpoint(ckpt_path) if ckpt_path else None
    if ckpt_path:
        info.dir = ckpt_path.parent  # continue in the original run directory

    data = TokenData.load(cfg.data)
    data.check_block_size(cfg.model.block_size)
    model_config = GPTConfig(**{k: v for k, v in cfg.model.items() if k != "name"}, vocab_size=data.vocab_size)
    model = GPT(model_config).to(device)
    if world.rank > 0:  # dropout masks differ between ranks as between micro-batches
        torch.manual_seed(cfg.seed + world.rank)
    head_chunk = head_chunk_tokens(cfg.head_chunk_tokens, model_config.vocab_size)
    optimizer = build_optimizer(model, cfg.optim, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    streams = range(world.rank * accum, (world.rank + 1) * accum)
    sampler = BatchSampler(data.train, cfg.trainer.batch_size, model_config.block_size, cfg.seed, device, streams)

    step, best_val_ce, skipped_steps = 0, math.inf, 0
    run_id = f"{int(time.time()):x}{random.Random().getrandbits(32):08x}"
    if ckpt:
        check_compatible(ckpt_path, ckpt, model_config.to_dict())
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        sampler.load_state_dict(ckpt["sampler"])
        rng_ranks = ckpt.get("rng_ranks", [])
        restore_rng_state(rng_ranks[world.rank] if len(rng_ranks) == world.size else ckpt["rng"])
        step, best_val_ce, run_id, skipped_steps = ckpt["step"], ckpt["best_val_ce"], ckpt["wandb_id"], ckpt["skipped_steps"]
        log.info("resuming from %s at step %d", ckpt_path, step)
    forward = torch.compile(model) if compiled else model
    if world.distributed:
        forward = DistributedDataParallel(forward, device_ids=[device.index] if device.type == "cuda" else None)

    autocast = autocast_context(device, dtype)
    tokens_per_step = cfg.trainer.batch_size * model_config.block_size * accum * world.size
    peak_flops = device_peak_flops(device, dtype)
    if peak_flops:
        peak_flops *= world.size  # tokens/s counts every process's tokens
    model_flops_per_token = flops_per_token(model)
    log.info(
        "model %s: %.2fM parameters, %s on %s (%s), %d tokens/step (%d x %d x %d micro-batches x %d processes), head %s, run dir %s",
        cfg.model.name, model.num_params() / 1e6, cfg.loss.name, device, str(dtype).removeprefix("torch."),
        tokens_per_step, cfg.trainer.batch_size, model_config.block_size, accum, world.size, f"in chunks of {head_chunk} tokens" if head_chunk else "in one piece", info.dir,
    )

    def save_state(best: bool) -> None:
        if not cfg.trainer.save_checkpoints:
            return
        samplers, rngs = world.gather(sampler.state_dict()), world.gather(capture_rng_state())
        if not world.main:
            return
        state = {
            "model": model.state_dict(),
            "model_config": model_config.to_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "step": step,
            "best_val_ce": best_val_ce,
            "config": OmegaConf.to_container(cfg, resolve=True),
            "data_meta": data.meta,
            "rng": rngs[0],
            "rng_ranks": rngs,
            "sampler": {"streams": {s: g for state in samplers for s, g in state["streams"].items()}},
            "wandb_id": run_id,
            "summary": tracker.summary,
            "skipped_steps": skipped_steps,
        }
        save_checkpoint(info.dir / "last.pt", state)
        if best:
            save_checkpoint(info.dir / "best.pt", state)

    def evaluate_and_checkpoint() -> None:
        nonlocal best_val_ce
        metrics = evaluate(model, data, loss_fn, cfg.loss, cfg.trainer.batch_size, cfg.trainer.eval_iters, autocast, head_chunk, world)
        tracker.log(metrics, step, step * tokens_per_step)
        log.info("step %d: train ce %.4f, val ce %.4f, val acc %.4f", step, metrics["train_eval/ce"], metrics["val/ce"], metrics["val/acc"])
        improved = metrics["val/ce"] < best_val_ce
        if improved:
            best_val_ce = metrics["val/ce"]
            tracker.update_summary({"best/val/ce": best_val_ce, "best/step": step})
        if metrics[cfg.objective] < tracker.summary.get(f"best/{cfg.objective}", math.inf):
            tracker.update_summary({f"best/{cfg.objective}": metrics[cfg.objective]})
        tracker.update_summary({f"final/{k}": v for k, v in metrics.items()})
        if step > 0:
            save_state(best=improved)

    progress = tqdm(total=cfg.trainer.max_iters, initial=step, unit="step", dynamic_ncols=True, disable=None if world.main else True)
    with (
        Tracker(cfg, info, run_id, resume_step=step if ckpt else None, enabled=world.main) as tracker,
        progress,
        logging_redirect_tqdm(),
        stop_requests() as stop_signals,
    ):
        if ckpt:
            tracker.update_summary(ckpt["summary"])
        else:
            evaluate_and_checkpoint()  # the untrained baseline (ln V for every loss)
        interval_start, interval_steps = time.perf_counter(), 0
        while step < cfg.trainer.max_iters:
            lr = lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss, grad_norm, skipped = train_step(
                forward, model, optimizer, scaler, sampler, loss_fn, cfg, autocast, head_chunk, accum, world
            )
            step += 1
            interval_steps += 1
            progress.update(1)
            if skipped:
                skipped_steps += 1
                tracker.log({"train/skipped_steps": skipped_steps}, step, step * tokens_per_step)
                log.warning("step %d: non-finite loss or gradient norm, update skipped (%d so far)", step, skipped_steps)
            logging = step % cfg.trainer.log_interval == 0 or step == cfg.trainer.max_iters
            evaluating = step % cfg.trainer.eval_interval == 0 or step == cfg.trainer.max_iters
            stopping = bool(stop_signals)
            if world.distributed:  # ranks receive a signal at different steps: they agree where they log
                stopping = logging and world.any(stopping)
            # `stop` looks only where the loop waits for the device anyway, never every step: a
            # non-finite update leaves non-finite weights, so it is caught at the next look.
            looking = cfg.trainer.on_nonfinite == "stop" and (logging or evaluating or stopping)
            if looking and not is_finite(loss, grad_norm, scaler):
                tracker.log({"train/loss": loss.item(), "train/grad_norm": grad_norm.item()}, step, step * tokens_per_step)
                raise Diverged(f"non-finite loss ({loss.item()}) or gradient norm ({grad_norm.item()}) at step {step}")

            if logging:
                dt = (time.perf_counter() - interval_start) / interval_steps
                tokens_per_s = tokens_per_step / dt
                stats = {
                    "train/loss": loss.item(),
                    "train/lr": lr,
                    "train/grad_norm": grad_norm.item(),
                    "perf/step_ms": 1000 * dt,
                    "perf/tokens_per_s": tokens_per_s,
                }
                if peak_flops:
                    stats["perf/mfu"] = model_flops_per_token * tokens_per_s / peak_flops
                tracker.log(stats, step, step * tokens_per_step)
                progress.set_postfix(loss=f"{stats['train/loss']:.4f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
                if progress.disable:
                    log.info("step %d: loss %.4f, %.1f ms/step, %.0f tokens/s", step, stats["train/loss"], 1000 * dt, tokens_per_s)
                interval_start, interval_steps = time.perf_counter(), 0

            if evaluating:
                evaluate_and_checkpoint()
                interval_start, interval_steps = time.perf_counter(), 0  # keep eval out of tokens/s
            if stopping:
                save_state(best=False)
                raise Interrupted(stop_signals[0] if stop_signals else signal.SIGTERM)
    return tracker.summary.get(f"best/{cfg.objective}", math.nan)


# A single run exits with these; a multirun job records its failure instead and lets the others run.
EXIT_DIVERGED = 3


@hydra.main(version_base="1.3", config_path="pkg://nanolab.configs", config_name="train")
def main(cfg: DictConfig) -> float:
    info = hydra_run_info(cfg)
    try:
        return train(cfg, info)
    except Interrupted as e:
        log.warning("%s", e)
        sys.exit(128 + e.signum)  # the machine is going away: stop a whole sweep too
    except (ConfigError, Diverged) as e:
        log.error("%s", e)
        if not info.multirun:
            sys.exit(EXIT_CONFIG_ERROR if isinstance(e, ConfigError) else EXIT_DIVERGED)
        record_failure(info.dir, e)
    except Exception as e:
        if not info.multirun:
            raise
        log.exception("job failed")
        record_failure(info.dir, e)
    return math.nan


if __name__ == "__main__":
    # The function of the imported module, not __main__'s: launchers that pickle the task
    # (joblib, submitit) then refer to nanolab.train.main by name instead of copying its globals.
    from nanolab.train import main as importable_main

    importable_main()
