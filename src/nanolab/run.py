"""A training run's parts, built once from the config, and the training step.

`build_run` makes the model, optimizer, GradScaler, batch sampler, loss and schedule exactly
as nanolab.train uses them; nanolab.bench builds the same `Run` and times the same
`train_step`, whose `lap` hook marks the end of each phase (data, forward, backward,
optimizer) for bench's time split and costs nothing otherwise.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from omegaconf import DictConfig
from torch.nn.parallel import DistributedDataParallel

from nanolab import ConfigError
from nanolab.data import TokenData, prepare
from nanolab.dataloader import BatchSampler, FullBatchSampler
from nanolab.distributed import World, gradient_sync, local_grad_accum
from nanolab.frequency import FrequencyBins, configured_bins, loss_class_counts
from nanolab.losses import LossFn, chunked_head_loss, get_loss, head_chunk_tokens, head_loss
from nanolab.model import GPT, GPTConfig
from nanolab.noise import squared_grad_norm
from nanolab.optim import CombinedOptimizer, build_optimizer, build_schedule, set_optimizer_mode
from nanolab.resume import Resume, check_compatible
from nanolab.runtime import Runtime, capture_rng_state, restore_rng_state, seed_everything
from nanolab.sparsity import SparseTraining, build_sparsity
from nanolab.weights import load_into, read_weights

log = logging.getLogger("nanolab.train")


# Param-group entries that an optimizer itself updates as it steps (pytorch-optimizer's step
# count, the schedule-free averages): they continue from the checkpoint. Every other entry is
# a hyperparameter set from the config, and `lr` is set before each step.
RUNNING_GROUP_KEYS = ("step", "train_mode", "weight_sum", "lr_max")


@dataclass(kw_only=True)
class Run:
    """Everything a training step touches."""

    cfg: DictConfig
    world: World
    runtime: Runtime
    data: TokenData
    model: GPT
    forward: torch.nn.Module  # the model, DDP-wrapped and/or compiled: what a step calls
    optimizer: torch.optim.Optimizer | CombinedOptimizer
    scaler: torch.amp.GradScaler
    sampler: BatchSampler | FullBatchSampler
    loss_fn: LossFn
    lr_at: Callable[[int], float]
    head_chunk: int  # tokens per chunk of the output head and loss; 0: one piece
    accum: int  # micro-batches per optimizer step on this rank
    # a chunk's head + loss, compiled with the model
    chunk_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    freq: FrequencyBins | None  # the classes' frequency bins, for val_freq/* metrics
    sparsity: SparseTraining | None  # gradual pruning's masks and the sparsity penalties

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimizer step over all ranks."""
        return (
            self.cfg.trainer.batch_size
            * self.model.config.block_size
            * self.accum
            * self.world.size
        )

    def state_dict(self) -> dict | None:
        """The run's part of a checkpoint: model, optimizer, scaler, and every rank's data
        streams and RNG states. Every rank must call it (it gathers); rank 0 gets the state,
        the others None."""
        samplers = self.world.gather(self.sampler.state_dict())
        rngs = self.world.gather(capture_rng_state(self.runtime.device))
        if not self.world.main:
            return None
        return {
            "model": self.model.state_dict(),
            "model_config": self.model.config.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "data_meta": self.data.meta,
            # where evaluate and prune look for it first
            "data_dir": str(Path(self.cfg.data.dir).resolve()),
            "rng": rngs[0],
            "rng_ranks": rngs,
            "sampler": {
                "streams": {s: g for state in samplers for s, g in state["streams"].items()}
            },
            "sparsity": self.sparsity.state_dict() if self.sparsity else None,
        }

    def load_state_dict(self, state: dict, fresh_optimizer: bool = False) -> None:
        """Continue from a checkpoint: weights, optimizer (unless `fresh_optimizer`), scaler,
        this rank's data streams and RNG state (the first rank's when the world size changed)."""
        self.model.load_state_dict(state["model"])
        if not fresh_optimizer:
            self.load_optimizer(state["optimizer"])
        # a disabled scaler (float32, bfloat16) saves {}: a float16 run starts its own
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(state["sampler"])
        if self.sparsity and state["sparsity"]:
            self.sparsity.load_state_dict(state["sparsity"])
        rng_ranks = state["rng_ranks"]
        rng = rng_ranks[self.world.rank] if len(rng_ranks) == self.world.size else state["rng"]
        restore_rng_state(rng, self.runtime.device)

    def load_optimizer(self, saved: dict) -> None:
        """Load an optimizer state into the optimizer, keeping the hyperparameters the config set
        (weight decay, betas, the kernel choice...): load_state_dict would bring back the
        checkpoint's, so a change allow_changes permits would be recorded but not applied, and a
        CPU checkpoint would run unfused on a GPU."""
        configured = [
            {k: v for k, v in g.items() if k not in ("params", "lr", *RUNNING_GROUP_KEYS)}
            for g in self.optimizer.param_groups
        ]
        try:
            self.optimizer.load_state_dict(saved)
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(
                f"the checkpoint's optimizer state does not fit optim={self.cfg.optim.name} "
                f"({str(e).splitlines()[0]}); resume with its "
                "optimizer settings, or start the optimizer state afresh with fresh_optimizer=true"
            ) from None
        for group, values in zip(self.optimizer.param_groups, configured):
            group.update(values)


def build_run(
    cfg: DictConfig,
    world: World,
    runtime: Runtime,
    resume: Resume | None = None,
    data: TokenData | None = None,
) -> Run:
    """The run's parts from the config, seeded; continued from a checkpoint when `resume` is
    given (its model must fit the configured one); on `data` when given, else on the
    configured data, prepared if needed."""
    if world.main:
        warn_if_all_warmup(cfg)
    lr_at = build_schedule(cfg.schedule, cfg.optim.lr)
    # Seeded first: the seed alone fixes the initial weights, dropout masks and batches.
    seed_everything(cfg.seed)
    data = data or load_data(cfg.data, world)
    data.limit_train(cfg.data.train_tokens)
    data.add_label_noise(cfg.data.label_noise, cfg.data.label_noise_seed)
    data.check_block_size(cfg.model.block_size)
    loss_fn = get_loss(cfg.loss, loss_class_counts(cfg.loss, data, runtime.device))
    check_activation_memory(cfg, runtime)
    model_config = GPTConfig.from_keys(cfg.model, data.vocab_size)
    model = GPT(model_config)
    # a resumed run's weights come from its checkpoint
    if cfg.init_from is not None and resume is None:
        load_into(model, read_weights(cfg.init_from), data.meta)
    model = model.to(runtime.device)
    if world.rank > 0:  # dropout masks differ between ranks as between micro-batches
        torch.manual_seed(cfg.seed + world.rank)
    sampler, accum = build_sampler(cfg, data, world, runtime.device)
    run = Run(
        cfg=cfg,
        world=world,
        runtime=runtime,
        data=data,
        model=model,
        forward=model,
        optimizer=build_optimizer(model, cfg.optim, runtime.device),
        scaler=torch.amp.GradScaler(runtime.device.type, enabled=runtime.dtype == torch.float16),
        sampler=sampler,
        loss_fn=loss_fn,
        lr_at=lr_at,
        head_chunk=head_chunk_tokens(cfg.head_chunk_tokens, model_config.vocab_size),
        accum=accum,
        chunk_loss=head_loss(model.head, loss_fn, cfg.loss, compile=runtime.compile),
        freq=configured_bins(cfg.token_freq, data),
        sparsity=build_sparsity(cfg.sparsity, model, cfg.trainer.max_iters),
    )
    if resume is not None:
        check_compatible(resume.path, resume.state, model_config.to_dict())
        run.load_state_dict(resume.state, fresh_optimizer=cfg.fresh_optimizer)
    run.forward = wrap_forward(model, runtime, world)
    return run


def warn_if_all_warmup(cfg: DictConfig) -> None:
    if cfg.schedule.warmup_iters >= cfg.trainer.max_iters:
        log.warning(
            "schedule.warmup_iters=%d is not shorter than "
            "trainer.max_iters=%d: the learning rate never reaches optim.lr=%g "
            "(the whole run is warmup); lower schedule.warmup_iters",
            cfg.schedule.warmup_iters,
            cfg.trainer.max_iters,
            cfg.optim.lr,
        )


def build_sampler(
    cfg: DictConfig, data: TokenData, world: World, device: torch.device
) -> tuple[BatchSampler | FullBatchSampler, int]:
    """The training batches and the micro-batches per step on this rank: random windows, each
    micro-batch from its own stream; or, with trainer.full_batch, the whole training set."""
    if cfg.trainer.full_batch:
        if world.distributed:
            raise ConfigError(
                "trainer.full_batch=true runs in one process; run it without torchrun"
            )
        if cfg.trainer.grad_accum != 1:
            raise ConfigError(
                "trainer.full_batch=true sets the micro-batches itself; leave "
                f"trainer.grad_accum at 1 (it is {cfg.trainer.grad_accum})"
            )
        sampler = FullBatchSampler(
            data.train, cfg.trainer.batch_size, cfg.model.block_size, device, data.train_targets
        )
        return sampler, sampler.micro_batches
    accum = local_grad_accum(cfg.trainer.grad_accum, cfg.trainer.fix_global_batch, world)
    streams = range(world.rank * accum, (world.rank + 1) * accum)
    return BatchSampler(
        data.train,
        batch_size=cfg.trainer.batch_size,
        block_size=cfg.model.block_size,
        seed=cfg.seed,
        device=device,
        streams=streams,
        targets=data.train_targets,
    ), accum


def wrap_forward(model: GPT, runtime: Runtime, world: World) -> torch.nn.Module:
    """What a training step calls: the model, DDP-wrapped under torchrun, then compiled. In
    this order torch.compile sees DDP's buckets and splits the graph at their boundaries
    (DDPOptimizer), so gradient all-reduces overlap the compiled backward."""
    forward: torch.nn.Module = model
    if world.distributed:
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        forward = DistributedDataParallel(forward, device_ids=device_ids)
    if runtime.compile:
        forward = torch.compile(forward)
    return forward


def check_activation_memory(cfg: DictConfig, runtime: Runtime) -> None:
    """Refuse a micro-batch whose activations alone cannot fit the device: a step that swaps
    for minutes cannot even be interrupted. The estimate is a lower bound: the 34·b·T·d
    16-bit values per layer of Korthikanti et al. (2022) that do not depend on attention's
    implementation (twice the bytes in float32)."""
    m, batch = cfg.model, cfg.trainer.batch_size
    bytes_per_value = 1 if runtime.dtype in (torch.bfloat16, torch.float16) else 2
    needed = 34 * batch * m.block_size * m.n_embd * m.n_layer * bytes_per_value
    available = runtime.memory_bytes()
    if needed > available:
        raise ConfigError(
            f"model.block_size={m.block_size} with trainer.batch_size={batch} needs at least "
            f"{needed / 2**30:.0f} GiB of activations ({m.n_layer} layers of width {m.n_embd}), "
            f"more than the {available / 2**30:.0f} GiB of this {runtime.device.type}; lower "
            "model.block_size or trainer.batch_size (trainer.grad_accum keeps the batch)"
        )


def load_data(cfg: DictConfig, world: World) -> TokenData:
    """The dataset, prepared first if needed. Under torchrun one rank prepares it (global rank
    0 with `data.shared_filesystem`, else local rank 0 of each node) while the others wait:
    ranks preparing the same directory at once delete each other's files."""
    if not world.distributed:
        return TokenData.load(cfg)
    if world.rank == 0 if cfg.shared_filesystem else world.local_rank == 0:
        prepare(cfg)
    world.wait_for_all()
    return TokenData.load(cfg, prepare_missing=False)


def batch_loss(run: Run, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The training loss of a batch; with a head chunk the output head and the loss run that
    many tokens at a time, so the logits of the whole batch never exist (large vocabularies)."""
    if not run.head_chunk:
        logits = run.forward(x)
        return run.loss_fn(logits.reshape(-1, logits.size(-1)), y.reshape(-1), run.cfg.loss)
    hidden = run.forward(x, head=False)
    head_params = list(run.model.lm_head.parameters())
    # With float16 the GradScaler's scale must reach the gradients the chunked head takes
    # inside its forward pass, or per-logit gradients (~1/(V*N)) underflow to zero.
    grad_scale = (
        run.scaler.scale(torch.ones((), device=hidden.device)) if run.scaler.is_enabled() else None
    )
    # Training targets are token ids, never negative: with a negative ignore_index (the
    # default) every one counts, and the chunks need not read the targets back to know it.
    return chunked_head_loss(
        hidden.flatten(0, 1),
        y.flatten(),
        head=run.model.head,
        head_params=head_params,
        loss_fn=run.loss_fn,
        cfg=run.cfg.loss,
        chunk_tokens=run.head_chunk,
        grad_scale=grad_scale,
        chunk_loss=run.chunk_loss,
        all_counted=run.cfg.loss.ignore_index < 0,
    )


class StepResult(NamedTuple):
    """A step's mean loss over all ranks and its gradient norm, as device tensors (reading
    them waits for the device), and whether the update was skipped."""

    loss: torch.Tensor
    grad_norm: torch.Tensor
    skipped: bool
    # noise_scale.enabled: the squared gradient norm of each process's first micro-batch alone,
    # averaged over the processes
    first_micro_sq: torch.Tensor | None = None
    penalty: torch.Tensor | None = None  # sparsity.l1 / group_lasso: the penalty term


def is_finite(result: StepResult, scaler: torch.amp.GradScaler) -> bool:
    """Whether a step's loss and gradient norm are finite. With float16 the GradScaler owns
    inf/nan gradients (it skips the step and lowers the scale), so only the loss counts there.
    This waits for the device, so the loop calls it only where it waits anyway."""
    return bool(torch.isfinite(result.loss)) and (
        scaler.is_enabled() or bool(torch.isfinite(result.grad_norm))
    )


def _no_lap(phase: str) -> None:
    pass


def train_step(run: Run, lap: Callable[[str], None] = _no_lap) -> StepResult:
    """One optimizer step over the run's micro-batches on each rank, at the learning rate
    already set. With `trainer.on_nonfinite=skip_step` a non-finite step skips the update.
    `lap(phase)` is called as each phase ends: data, forward, backward (per micro-batch) and
    optimizer."""
    trainer = run.cfg.trainer
    set_optimizer_mode(run.optimizer, train=True)
    total = torch.zeros((), device=run.runtime.device)
    first_micro_sq = None
    # Each micro-batch's loss is divided by their number, so the accumulated gradient is the
    # mean over the step's batch whatever grad_accum and the number of processes; DDP syncs
    # the gradients once, on the last micro-batch.
    for micro in range(run.accum):
        x, y = run.sampler.next_batch()
        lap("data")
        with gradient_sync(run.forward, last_micro_step=micro == run.accum - 1):
            with run.runtime.autocast():
                loss = batch_loss(run, x, y)
            lap("forward")
            run.scaler.scale(loss / run.accum).backward()
            lap("backward")
        if micro == 0 and run.cfg.noise_scale.enabled:
            # before the other micro-batches accumulate onto it: unscaled, and undivided
            scale = run.accum / run.scaler.get_scale()
            first_micro_sq = squared_grad_norm(run.model) * scale**2
        total += loss.detach()
    run.world.mean_(total)  # every rank sees the same loss, so every rank takes the same decisions
    if first_micro_sq is not None:
        run.world.mean_(first_micro_sq)
    penalty = run.sparsity.penalty() if run.sparsity else None
    if penalty is not None:
        # no data enters it: its gradient is added once per step, the same on every rank
        run.scaler.scale(penalty).backward()
        penalty = penalty.detach()
    run.scaler.unscale_(run.optimizer)  # so that clipping and the logged norm see true gradients
    max_norm = trainer.grad_clip if trainer.grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), max_norm)
    result = StepResult(
        total / run.accum, grad_norm, skipped=False, first_micro_sq=first_micro_sq, penalty=penalty
    )
    if trainer.on_nonfinite == "skip_step" and not is_finite(result, run.scaler):
        result = result._replace(skipped=True)
    if run.scaler.is_enabled() or not result.skipped:
        # With float16 the GradScaler owns skipping: its step skips non-finite gradients and
        # its update must follow every unscale_, or the next step's unscale_ raises.
        run.scaler.step(run.optimizer)
        run.scaler.update()
    if run.sparsity:
        run.sparsity.apply()  # pruned weights stay zero
    run.optimizer.zero_grad(set_to_none=True)
    lap("optimizer")
    return result


def set_lr(run: Run, step: int) -> float:
    """Set the schedule's learning rate for `step` on every parameter group (times the group's
    `lr_scale`, if it has one); returns it."""
    lr = run.lr_at(step)
    for group in run.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    return lr
