"""The training loop: a `Trainer` that steps a `Run` and hands each step to the periodic
concerns, each deciding its own interval (as torchtitan's Trainer.train does):

    while step < max_iters:
        train_step                          (nanolab.run)
        skipped and non-finite steps        (trainer.on_nonfinite)
        sparsity       gradual pruning at its schedule's steps (sparsity.final; off by default)
        metric_logger  every trainer.log_interval steps
        sharpness      every sharpness.every steps (off by default)
        validator      every trainer.eval_interval steps, then early stopping and the checkpointer
        stop           when a SIGTERM/SIGINT arrived: checkpoint, then exit

A signal that arrives during an evaluation or a sharpness measurement abandons it at its next
batch, so the stop checkpoint is written within seconds; an abandoned evaluation is done first
when the run resumes.

The loop's own state (step, best val/ce, skipped steps, early stopping, W&B run id) is a
`RunState` with a state_dict, saved in every checkpoint next to the run's.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from nanolab import Abandoned, ConfigError, Diverged, Interrupted
from nanolab.checkpoint import save_checkpoint, saved_config
from nanolab.config import check_config
from nanolab.data import TokenData
from nanolab.dataloader import FullBatchSampler, stream_seed
from nanolab.distributed import World, process_group
from nanolab.flops import CONVENTION, budget_iters, flops_per_token, matrix_params
from nanolab.launch import RunInfo, stop_requests
from nanolab.metrics import evaluate_batches
from nanolab.model import GPTConfig
from nanolab.noise import NoiseScale
from nanolab.optim import set_optimizer_mode
from nanolab.resume import prepare_resume
from nanolab.run import Run, StepResult, build_run, is_finite, load_data, set_lr, train_step
from nanolab.runtime import Runtime, pick_device
from nanolab.sharpness import PROBE_STREAM, SharpnessProbe, probe_windows
from nanolab.tracking import Tracker, git_state

log = logging.getLogger("nanolab.train")


def train(cfg: DictConfig, info: RunInfo) -> float:
    """Run training as configured, alone or as one rank under torchrun; returns the best value
    of `objective` over the evaluations (what sweepers such as Optuna minimise)."""
    check_config(cfg)
    with process_group(pick_device(cfg.device, info.job_num)) as (world, device):
        return Trainer(cfg, world, device, info).train()


def apply_flops_budget(cfg: DictConfig, world: World) -> TokenData | None:
    """With trainer.flops_budget, set trainer.max_iters to the steps it buys at this model's
    FLOPs per token (the vocabulary comes from the data, loaded here and returned for the run)
    and batch; schedules that follow trainer.max_iters follow it. None without a budget."""
    budget = cfg.trainer.flops_budget
    if budget is None:
        return None
    if cfg.trainer.full_batch:
        raise ConfigError(
            "trainer.flops_budget counts sampled tokens per step; set trainer.full_batch=false"
        )
    data = load_data(cfg.data, world)
    model = GPTConfig.from_keys(cfg.model, data.vocab_size)
    processes = 1 if cfg.trainer.fix_global_batch else world.size
    tokens = cfg.trainer.batch_size * model.block_size * cfg.trainer.grad_accum * processes
    steps = budget_iters(budget, model, tokens)
    cfg.trainer.max_iters = steps
    if world.main:
        log.info(
            "trainer.max_iters=%d from trainer.flops_budget=%.3g: %.4g FLOPs/token x %d "
            "tokens/step (%s)",
            steps,
            budget,
            flops_per_token(model),
            tokens,
            CONVENTION,
        )
    return data


def run_size(run: Run) -> dict[str, Any]:
    """The model's size and what setup decided, for summary.json and the W&B config: FLOPs per
    token, the budget, and the resolved shape nanolab.scaling reads (the saved config holds
    interpolations)."""
    config = run.model.config
    return {
        "params": run.model.num_params(),
        "matrix_params": matrix_params(config),
        "flops_per_token": flops_per_token(config),
        "flops_budget": run.cfg.trainer.flops_budget,
        "train_tokens": len(run.data.train),
        "vocab_size": run.data.vocab_size,
        "n_layer": config.n_layer,
        "n_embd": config.n_embd,
        "head_size": config.head_size,
        "block_size": config.block_size,
    }


def new_run_id() -> str:
    """A W&B run id unique across machines: launch time and 32 random bits, in hex."""
    return f"{int(time.time()):x}{random.Random().getrandbits(32):08x}"


@dataclass(kw_only=True)
class RunState:
    """What the loop itself carries from step to step and across a resume."""

    step: int = 0
    best_val_ce: float = math.inf
    skipped_steps: int = 0
    run_id: str = field(default_factory=new_run_id)
    early_stop: dict = field(
        default_factory=lambda: {"best": math.inf, "evals_without_improvement": 0, "stopped": False}
    )
    # this step's evaluation was abandoned for a stop: the resumed run does it first
    eval_due: bool = False
    noise: NoiseScale | None = None  # noise_scale.enabled: the gradient noise scale's averages

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "best_val_ce": self.best_val_ce,
            "skipped_steps": self.skipped_steps,
            "wandb_id": self.run_id,
            "early_stop": dict(self.early_stop),
            "eval_due": self.eval_due,
            "noise_scale": self.noise.state_dict() if self.noise else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.step, self.best_val_ce = state["step"], state["best_val_ce"]
        self.skipped_steps, self.run_id = state["skipped_steps"], state["wandb_id"]
        self.early_stop, self.eval_due = dict(state["early_stop"]), state["eval_due"]
        if self.noise and state["noise_scale"]:  # else its averages start here
            self.noise.load_state_dict(state["noise_scale"])


class SlowdownWatch:
    """Notices a CPU shared with another busy process: once the run's step time has stayed at
    `factor` times its own early median for `sustained` log intervals in a row, `observe`
    returns a warning, once. With 2 cores, one busy neighbour slows a 2-thread step 2.6-4.2x
    while a 1-thread step hardly changes (docs/benchmarks.md)."""

    def __init__(self, factor: float = 2.0, early: int = 5, sustained: int = 5) -> None:
        self.factor, self.early, self.sustained = factor, early, sustained
        self.times: list[float] = []
        self.warned = False

    def observe(self, step_ms: float) -> str | None:
        self.times.append(step_ms)
        baseline_window = self.times[1 : 1 + self.early]  # the first interval warms up
        if self.warned or len(self.times) < 1 + self.early + self.sustained:
            return None
        baseline = statistics.median(baseline_window)
        recent = self.times[-self.sustained :]
        if min(recent) < self.factor * baseline:
            return None
        self.warned = True
        return (
            f"steps take {statistics.median(recent):.0f} ms against {baseline:.0f} ms early in "
            f"this run: the CPU looks shared with another busy process; {torch.get_num_threads()} "
            "threads then compete with it, and threads=1 is often faster (docs/benchmarks.md)"
        )


class MetricLogger:
    """Every `trainer.log_interval` steps (and at the last): loss, lr, gradient norm, step
    time, tokens/s and MFU, timed over the steps since the last log or evaluation, and the
    gradient noise scale when it is measured. A compiled
    model's first step in this process compiles it: it is left out of the timing."""

    def __init__(
        self, run: Run, tracker: Tracker, progress: tqdm, step: int, noise: NoiseScale | None
    ) -> None:
        self.run, self.tracker, self.progress, self.noise = run, tracker, progress, noise
        self.flops_per_token = flops_per_token(run.model.config)
        peak = run.runtime.peak_flops()
        # tokens/s counts every process's tokens
        self.peak_flops = peak * run.world.size if peak else None
        self.compiling = run.runtime.compile
        self.slowdown = SlowdownWatch() if run.runtime.device.type == "cpu" else None
        self.restart_clock(step)

    def step_done(self, step: int) -> None:
        if self.compiling:
            self.compiling = False
            self.restart_clock(step)

    def restart_clock(self, step: int) -> None:
        """Time the steps after `step` (restarted after an evaluation, so it stays out of
        tokens/s)."""
        self.interval_start, self.interval_first_step = time.perf_counter(), step

    def should_log(self, step: int) -> bool:
        return (
            step % self.run.cfg.trainer.log_interval == 0 or step == self.run.cfg.trainer.max_iters
        )

    def log(self, step: int, result: StepResult, lr: float) -> None:
        stats = {
            "train/loss": result.loss.item(),
            "train/lr": lr,
            "train/grad_norm": result.grad_norm.item(),
        }
        if self.noise:
            stats |= self.noise.metrics()
        if result.penalty is not None:
            stats["train/penalty"] = result.penalty.item()
        timed_steps = step - self.interval_first_step  # 0 right after a compiling step
        if timed_steps:
            dt = (time.perf_counter() - self.interval_start) / timed_steps
            stats |= {"perf/step_ms": 1000 * dt, "perf/tokens_per_s": self.run.tokens_per_step / dt}
            if self.peak_flops:
                stats["perf/mfu"] = (
                    self.flops_per_token * stats["perf/tokens_per_s"] / self.peak_flops
                )
            warning = self.slowdown.observe(stats["perf/step_ms"]) if self.slowdown else None
            if warning:
                log.warning("%s", warning)
            self.progress.set_postfix(
                loss=f"{stats['train/loss']:.4f}",
                tok_s=f"{stats['perf/tokens_per_s']:,.0f}",
                refresh=False,
            )
        self.tracker.log(stats, step, step * self.run.tokens_per_step)
        if self.progress.disable:
            timing = (
                f", {stats['perf/step_ms']:.1f} ms/step, {stats['perf/tokens_per_s']:.0f} tokens/s"
                if timed_steps
                else ""
            )
            log.info("step %d: loss %.4f%s", step, stats["train/loss"], timing)
        self.restart_clock(step)


class Validator:
    """Every `trainer.eval_interval` steps (and at the last): the loss-independent metrics on
    both splits, the best values in the summary."""

    def __init__(self, run: Run, tracker: Tracker) -> None:
        self.run, self.tracker = run, tracker

    def should_validate(self, step: int) -> bool:
        return (
            step % self.run.cfg.trainer.eval_interval == 0 or step == self.run.cfg.trainer.max_iters
        )

    def validate(self, state: RunState, stop: list[int]) -> bool:
        """Evaluate at the current step (after the early-stopping bookkeeping); returns whether
        val/ce improved on the best so far. Abandoned once a stop is requested (`stop`), in one
        process: under DDP the ranks finish it together and agree on the stop afterwards."""
        run, cfg = self.run, self.run.cfg
        # A full-batch run's train_eval/* scores its own training windows: the training set's
        # error, which double descent reads, rather than random windows of the split.
        full_batch = (
            (run.sampler.x, run.sampler.y) if isinstance(run.sampler, FullBatchSampler) else None
        )
        metrics = evaluate_batches(
            run.model,
            run.data,
            loss_fn=run.loss_fn,
            loss_cfg=cfg.loss,
            batch_size=cfg.trainer.batch_size,
            eval_iters=cfg.trainer.eval_iters,
            autocast=run.runtime.autocast(),
            head_chunk=run.head_chunk,
            world=run.world,
            train_windows=full_batch,
            stop=() if run.world.distributed else stop,
            freq=run.freq,
        )
        self.tracker.log(metrics, state.step, state.step * run.tokens_per_step)
        log.info(
            "step %d: train ce %.4f, val ce %.4f, val acc %.4f",
            state.step,
            metrics["train_eval/ce"],
            metrics["val/ce"],
            metrics["val/acc"],
        )
        improved = metrics["val/ce"] < state.best_val_ce
        if improved:
            state.best_val_ce = metrics["val/ce"]
            self.tracker.update_summary({"best/val/ce": state.best_val_ce, "best/step": state.step})
        objective = metrics.get(cfg.objective)  # val/ce_calibrated exists on rank 0 alone
        if objective is not None and objective < self.tracker.summary.get(
            f"best/{cfg.objective}", math.inf
        ):
            self.tracker.update_summary({f"best/{cfg.objective}": objective})
        self.tracker.update_summary({f"final/{k}": v for k, v in metrics.items()})
        self.update_early_stop(state, objective)
        return improved

    def update_early_stop(self, state: RunState, objective: float | None) -> None:
        """Mark the run stopped once `objective` reaches trainer.early_stop.target, or once
        trainer.early_stop.patience evaluations in a row have not improved it by min_delta.
        Rank 0 decides for all."""
        cfg, early = self.run.cfg.trainer.early_stop, state.early_stop
        if not cfg.patience and cfg.target is None:
            return
        reached = cfg.target is not None and objective is not None and objective <= cfg.target
        if objective is not None and objective < early["best"] - cfg.min_delta:
            early["best"], early["evals_without_improvement"] = objective, 0
        else:
            early["evals_without_improvement"] += 1
        stalled = bool(cfg.patience) and early["evals_without_improvement"] >= cfg.patience
        # the objective may exist on rank 0 alone
        early["stopped"] = self.run.world.any((reached or stalled) and self.run.world.main)
        if early["stopped"]:
            why = (
                f"reached trainer.early_stop.target={cfg.target}"
                if reached
                else f"has not improved by {cfg.min_delta:g} for {cfg.patience} evaluations"
            )
            log.info("step %d: %s %s: stopping early", state.step, self.run.cfg.objective, why)


class Checkpointer:
    """Saves a training run: last.pt at every evaluation and stop, best.pt as well when val/ce
    improved. It is handed what it saves (the run, the tracker's summary, the loop's state).
    Every rank calls `save` (the run's state is gathered); rank 0 writes."""

    def __init__(self, run: Run, tracker: Tracker, directory: Path) -> None:
        self.run, self.tracker, self.directory = run, tracker, directory

    def save(self, run_state: RunState, best: bool) -> None:
        if not self.run.cfg.trainer.save_checkpoints:
            return
        run_part = self.run.state_dict()
        if run_part is None:  # not rank 0
            return
        checkpoint = {
            **run_part,
            **run_state.state_dict(),
            "config": saved_config(self.run.cfg),
            "summary": self.tracker.summary,
        }
        save_checkpoint(self.directory / "last.pt", checkpoint)
        if best:
            save_checkpoint(self.directory / "best.pt", checkpoint)


def build_noise_scale(run: Run) -> NoiseScale | None:
    """The gradient noise scale's averages, when noise_scale.enabled: a micro-batch's tokens
    against a step's."""
    cfg = run.cfg
    if not cfg.noise_scale.enabled:
        return None
    if run.accum < 2:
        raise ConfigError(
            "noise_scale.enabled=true needs at least two micro-batches per step on each "
            f"process, and this one runs {run.accum}: raise trainer.grad_accum"
        )
    micro = cfg.trainer.batch_size * cfg.model.block_size
    return NoiseScale(cfg.noise_scale.ema, b_small=micro, b_big=run.tokens_per_step)


def build_probe(run: Run) -> SharpnessProbe | None:
    """The sharpness probe on rank 0 (the others would repeat its work), when sharpness.every
    is set: a full-batch run's whole training set, else a fixed random probe set."""
    cfg = run.cfg
    if not cfg.sharpness.every or not run.world.main:
        return None
    if isinstance(run.sampler, FullBatchSampler):
        x, y = run.sampler.x, run.sampler.y
    else:
        x, y = probe_windows(
            run.data.train,
            cfg.sharpness.probe_tokens,
            run.model.config.block_size,
            stream_seed(cfg.seed, PROBE_STREAM),
            run.data.train_targets,
        )
    return SharpnessProbe(
        cfg,
        run.model,
        run.loss_fn,
        x.to(run.runtime.device),
        y.to(run.runtime.device),
        seed=cfg.seed,
    )


class Trainer:
    """One training run in this process: its parts, its state and the loop."""

    def __init__(self, cfg: DictConfig, world: World, device: torch.device, info: RunInfo) -> None:
        self.cfg, self.info = cfg, info
        runtime = Runtime.create(
            device, cfg.dtype, cfg.compile, cfg.cpu_keep_freed_memory, cfg.threads
        )
        data = apply_flops_budget(cfg, world)
        self.resume = prepare_resume(cfg, info.dir)
        self.resume_changes: list[str] = []
        if self.resume:
            info.dir = self.resume.path.parent  # continue in the original run directory
            self.resume_changes = list(self.resume.changes)
            for change in self.resume_changes:
                log.warning("resuming with a change allowed by allow_changes: %s", change)
        self.run = build_run(cfg, world, runtime, self.resume, data)
        self.state = RunState(noise=build_noise_scale(self.run))
        if self.resume:
            self.state.load_state_dict(self.resume.state)
            log.info("resuming from %s at step %d", self.resume.path, self.state.step)
            self.resume_changes += self.data_change()
        self._describe()

    def data_change(self) -> list[str]:
        """A warning, and an entry for the summary's resume/changes, when the training text
        differs from the one the checkpoint trained on (the same vocabulary, other content)."""
        saved, now = (
            self.resume.state["data_meta"].get("source_hash"),
            self.run.data.meta.get("source_hash"),
        )
        if saved is None or saved == now:
            return []
        change = (
            f"the training data changed: data hash {saved[:12]} in the "
            f"checkpoint, {str(now)[:12]} in {self.cfg.data.dir} now"
        )
        log.warning(
            "resuming on other text than the checkpoint trained on (%s); its metrics will mix both",
            change,
        )
        return [change]

    def _describe(self) -> None:
        run, cfg = self.run, self.cfg
        log.info(
            "model %s: %.2fM parameters, %s on %s (%s), %d tokens/step (%d x %d x %d "
            "micro-batches x %d processes), head %s, run dir %s",
            cfg.model.name,
            run.model.num_params() / 1e6,
            cfg.loss.name,
            run.runtime.device,
            str(run.runtime.dtype).removeprefix("torch."),
            run.tokens_per_step,
            cfg.trainer.batch_size,
            run.model.config.block_size,
            run.accum,
            run.world.size,
            f"in chunks of {run.head_chunk} tokens" if run.head_chunk else "in one piece",
            self.info.dir,
        )

    def resolved(self) -> dict[str, Any]:
        """What setup decided, for the W&B config: the `auto` settings resolved."""
        run = self.run
        return {
            "device": str(run.runtime.device),
            "dtype": str(run.runtime.dtype).removeprefix("torch."),
            "compile": run.runtime.compile,
            "head_chunk_tokens": run.head_chunk,
            "tokens_per_step": run.tokens_per_step,
            "world_size": run.world.size,
            "git": git_state(),
        }

    def train(self) -> float:
        """Train to trainer.max_iters; returns the best value of `objective`."""
        run, state = self.run, self.state
        # a relaunched sweep's finished job
        if self.resume and self.resume.finished(self.cfg.trainer.max_iters):
            log.info(
                "%s: already finished at step %d (trainer.max_iters=%d); nothing to do",
                self.info.dir,
                state.step,
                self.cfg.trainer.max_iters,
            )
            return self.resume.state["summary"].get(f"best/{self.cfg.objective}", math.nan)
        # W&B config and summary.json
        size = run_size(run)
        self.tracker = Tracker(
            self.cfg,
            self.info,
            state.run_id,
            resume_step=state.step if self.resume else None,
            enabled=run.world.main,
            resolved=self.resolved() | size if run.world.main else None,
        )
        progress = tqdm(
            total=self.cfg.trainer.max_iters,
            initial=state.step,
            unit="step",
            dynamic_ncols=True,
            disable=None if run.world.main else True,
        )
        # Signals are caught until the tracker has closed: one that comes while summary.json is
        # written or W&B finishes is noted and changes nothing, so a finished run stays finished.
        with stop_requests() as self.stop_signals, self.tracker, progress, logging_redirect_tqdm():
            self.validator = Validator(run, self.tracker)
            self.checkpointer = Checkpointer(run, self.tracker, self.info.dir)
            self.carry_summary(size)
            self.sharpness = build_probe(run)
            self.first_measurements()
            self.metric_logger = MetricLogger(run, self.tracker, progress, state.step, state.noise)
            while state.step < self.cfg.trainer.max_iters and not state.early_stop["stopped"]:
                lr = set_lr(run, state.step)
                result = train_step(run)
                state.step += 1
                progress.update(1)
                self.metric_logger.step_done(state.step)
                self.after_step(result, lr)
            if self.cfg.logger.log_checkpoints:
                self.tracker.log_checkpoint(
                    self.info.dir / "best.pt",
                    aliases=["best", f"step-{self.tracker.summary.get('best/step')}"],
                )
        return self.tracker.summary.get(f"best/{self.cfg.objective}", math.nan)

    def carry_summary(self, size: dict[str, int]) -> None:
        """The summary a resumed run continues, with the changes allow_changes let through
        recorded for good (every later segment carries them on), and the model's size."""
        if self.resume:
            self.tracker.update_summary(self.resume.state["summary"])
            if self.resume_changes:
                step = self.state.step
                earlier = self.tracker.summary.get("resume/changes", [])
                changes = [*earlier, *(f"step {step}: {c}" for c in self.resume_changes)]
                self.tracker.update_summary({"resume/changes": changes})
        self.tracker.update_summary(size)

    def first_measurements(self) -> None:
        """A fresh run's step-0 sharpness and untrained baseline evaluation (ln V for every
        loss); a resumed run's evaluation that a stop abandoned."""
        if not self.resume:
            if self.sharpness and self.sharpness.should_measure(0):
                self.measure_sharpness()
            set_optimizer_mode(self.run.optimizer, train=False)
            self.validate(save=False)
        elif self.state.eval_due:
            set_optimizer_mode(self.run.optimizer, train=False)
            self.validate(save=True)

    def after_step(self, result: StepResult, lr: float) -> None:
        """The periodic concerns, each at its own interval: skipped steps, non-finite values,
        logging, validation with its checkpoint, a requested stop."""
        step = self.state.step
        if result.skipped:
            self.count_skipped_step()
        elif self.state.noise:
            self.state.noise.observe(result.first_micro_sq, result.grad_norm.square())
        if self.run.sparsity and self.run.sparsity.due(step):
            stats = self.run.sparsity.prune(step)
            self.tracker.log(stats, step, step * self.run.tokens_per_step)
        logging_now = self.metric_logger.should_log(step)
        validating = self.validator.should_validate(step)
        stopping = self.stop_requested(at_log_step=logging_now)
        # `stop` looks only where the loop waits for the device anyway, never every step: a
        # non-finite update leaves non-finite weights, so it is caught at the next look.
        if self.cfg.trainer.on_nonfinite == "stop" and (logging_now or validating or stopping):
            self.stop_if_diverged(result)
        if logging_now:
            self.metric_logger.log(step, result, lr)
        if self.sharpness and self.sharpness.should_measure(step):
            self.measure_sharpness()
            self.metric_logger.restart_clock(step)
            # one that came meanwhile
            stopping = stopping or (not self.run.world.distributed and bool(self.stop_signals))
        # a schedule-free optimizer's averaged weights are evaluated and saved
        if validating or stopping:
            set_optimizer_mode(self.run.optimizer, train=False)
        if validating:
            self.validate(save=True)
            self.metric_logger.restart_clock(step)
        if stopping:
            self.stop()

    def validate(self, save: bool) -> None:
        """Evaluate at this step and, with `save`, write the checkpoint (best.pt too when val/ce
        improved). A stop requested meanwhile abandons the evaluation: the stop checkpoint
        then marks it due, for the resumed run to do first."""
        self.state.eval_due = False
        try:
            improved = self.validator.validate(self.state, self.stop_signals)
        except Abandoned as e:
            log.warning(
                "step %d: %s; evaluating at this step when the run resumes", self.state.step, e
            )
            self.state.eval_due = True
            self.stop()
        if save:
            self.checkpointer.save(self.state, best=improved)
        if self.state.early_stop["stopped"]:
            self.tracker.status = "early_stopped"

    def stop(self) -> None:
        """The checkpoint of this step, then Interrupted: a stop was requested."""
        self.checkpointer.save(self.state, best=False)
        raise Interrupted(self.stop_signals[0] if self.stop_signals else signal.SIGTERM)

    def measure_sharpness(self) -> None:
        """Sharpness on the probe set at the weights the next step's gradient is taken at, with
        the threshold at the next step's learning rate. A stop requested meanwhile abandons it
        (that step's measurement is then missing)."""
        step = self.state.step
        try:
            stats = self.sharpness.measure(
                self.run.optimizer, self.run.lr_at(step), self.stop_signals
            )
        except Abandoned as e:
            log.warning("step %d: %s; this step's sharpness is not measured", step, e)
            return
        self.tracker.log(stats, step, step * self.run.tokens_per_step)

    def count_skipped_step(self) -> None:
        state = self.state
        state.skipped_steps += 1
        self.tracker.log(
            {"train/skipped_steps": state.skipped_steps},
            state.step,
            state.step * self.run.tokens_per_step,
        )
        log.warning(
            "step %d: non-finite loss or gradient norm, update skipped (%d so far)",
            state.step,
            state.skipped_steps,
        )

    def stop_requested(self, at_log_step: bool) -> bool:
        """Whether to stop after this step. Ranks receive a signal at different steps, so under
        DDP they agree at log steps."""
        if self.run.world.distributed:
            return at_log_step and self.run.world.any(bool(self.stop_signals))
        return bool(self.stop_signals)

    def stop_if_diverged(self, result: StepResult) -> None:
        if not is_finite(result, self.run.scaler):
            step = self.state.step
            self.tracker.log(
                {"train/loss": result.loss.item(), "train/grad_norm": result.grad_norm.item()},
                step,
                step * self.run.tokens_per_step,
            )
            raise Diverged(
                f"non-finite loss ({result.loss.item()}) or gradient norm "
                f"({result.grad_norm.item()}) at step {step}"
            )
