"""Measure training speed and memory for any model / loss / data config (the groups of train).

    python -m nanolab.bench                           # nano, ce: step, time split, MFU, harness
    python -m nanolab.bench model=baby loss=mse
    python -m nanolab.bench bench.what=head loss=mse  # the chunked output head against the whole
    python -m nanolab.bench bench.what=compile model=baby
    python -m nanolab.bench bench.what=profile        # where a step's time goes (torch.profiler)
    python -m nanolab.bench bench.what=sharpness      # one sharpness measurement against a step
    python -m nanolab.bench bench.what=noise_scale trainer.grad_accum=2   # its cost in a step
    python -m nanolab.bench bench.what=token_freq     # metrics by token frequency: their cost

`step` times the same training step three ways, alternating them `bench.repeats` times so that
a change in the machine's speed hits all of them alike:
- bare: model, optimizer and sampler as train builds them, and nothing else (no Hydra run,
  W&B, metrics or progress bar);
- split: the bare step with a timer (and a device sync) between data, forward + loss,
  backward and optimizer (clip, step, zero_grad);
- loop: nanolab.train's own loop with W&B offline, metrics.jsonl and the progress bar, timed by
  its perf/step_ms over log intervals (evaluation excluded: it is measured on its own).
Each reports the median over blocks of `trainer.log_interval` steps of the mean step time.
MFU is against the device's datasheet peak on GPU, and on CPU against a float32 matmul peak
measured in the same run. Results are printed and written to bench.json in the run directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from queue import Empty
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch.autograd import DeviceType
from torch.nn import functional as F

from nanolab import ConfigError, exit_on_config_error
from nanolab.atomic import write_json
from nanolab.distributed import World
from nanolab.flops import flops_per_token
from nanolab.frequency import FrequencyBins, frequency_bins
from nanolab.launch import RunInfo
from nanolab.losses import chunked_head_loss, get_loss, head_chunk_tokens, uses_class_counts
from nanolab.metrics import evaluate_batches
from nanolab.noise import NoiseScale
from nanolab.run import Run, build_run, train_step
from nanolab.runtime import Runtime, measure_cpu_matmul_flops, pick_device, sync
from nanolab.trainer import build_noise_scale, build_probe, train

log = logging.getLogger("nanolab.bench")


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory measurement on CUDA (the CPU's peak resident set cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by tensors on CUDA since the last reset; the process's peak
    resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def runtime_of(cfg: DictConfig) -> Runtime:
    """The runtime nanolab.train would set up for this config (device, dtype, compile, TF32,
    the CPU allocator setting)."""
    return Runtime.create(
        pick_device(cfg.device), cfg.dtype, cfg.compile, cfg.cpu_keep_freed_memory, cfg.threads
    )


def setup(cfg: DictConfig) -> Run:
    """Model, optimizer, sampler and loss exactly as nanolab.train builds them."""
    return build_run(cfg, World(), runtime_of(cfg))


def bare_steps(run: Run, n: int) -> float:
    """Seconds per step over n steps of the training step and nothing else."""
    sync(run.runtime.device)
    t0 = time.perf_counter()
    for _ in range(n):
        train_step(run)
    sync(run.runtime.device)
    return (time.perf_counter() - t0) / n


class Laps:
    """The `lap` hook of train_step: seconds spent in each phase, with a device sync at each
    boundary so that queued GPU work is charged to the phase that queued it."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.times = device, {}
        sync(device)
        self.t = time.perf_counter()

    def __call__(self, phase: str) -> None:
        sync(self.device)
        now = time.perf_counter()
        self.times[phase] = self.times.get(phase, 0.0) + now - self.t
        self.t = now


def split_step(run: Run) -> dict[str, float]:
    """One training step with a timer between its phases (seconds each)."""
    laps = Laps(run.runtime.device)
    train_step(run, lap=laps)
    return laps.times


def eval_seconds(run: Run, freq: FrequencyBins | None = None) -> float:
    sync(run.runtime.device)
    t0 = time.perf_counter()
    t = run.cfg.trainer
    evaluate_batches(
        run.model,
        run.data,
        loss_fn=run.loss_fn,
        loss_cfg=run.cfg.loss,
        batch_size=t.batch_size,
        eval_iters=t.eval_iters,
        autocast=run.runtime.autocast(),
        head_chunk=run.head_chunk,
        freq=freq,
    )
    sync(run.runtime.device)
    return time.perf_counter() - t0


def loop_step_seconds(cfg: DictConfig, steps: int, directory: Path) -> list[float]:
    """Per-step seconds of nanolab.train's own loop (W&B offline, metrics.jsonl, progress bar),
    one value per log interval, from its perf/step_ms; evaluation runs only at the ends."""
    loop_cfg = cfg.copy()
    OmegaConf.update(loop_cfg, "trainer.max_iters", steps)
    OmegaConf.update(loop_cfg, "trainer.eval_interval", steps)
    OmegaConf.update(loop_cfg, "trainer.eval_iters", 1)
    OmegaConf.update(loop_cfg, "trainer.save_checkpoints", False)
    OmegaConf.update(loop_cfg, "logger.mode", "offline")
    OmegaConf.update(loop_cfg, "resume", False)
    os.environ.setdefault("WANDB_SILENT", "true")  # W&B's run summaries would bury the table
    train(loop_cfg, RunInfo(dir=directory, group="bench", name="bench-loop"))
    records = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
    return [r["perf/step_ms"] / 1000 for r in records if "perf/step_ms" in r]


def bench_step(cfg: DictConfig) -> dict[str, Any]:
    b = cfg.bench
    run = setup(cfg)
    block = cfg.trainer.log_interval
    peak_flops = run.runtime.peak_flops()
    flops = flops_per_token(run.model.config)
    log.info("warming up (%d steps)", b.warmup)
    bare_steps(run, b.warmup)
    bare, loop, splits = [], [], []
    peaks = []
    reset_peak_memory(run.runtime.device)
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(b.repeats):
            log.info("repeat %d/%d: bare, split, loop", repeat + 1, b.repeats)
            bare += [bare_steps(run, block) for _ in range(b.steps // block)]
            if repeat == 0:  # before the loop builds a second model in this process
                memory_mb = peak_memory_mb(run.runtime.device)
            splits += [split_step(run) for _ in range(b.steps)]
            loop += loop_step_seconds(cfg, b.warmup + b.steps, Path(tmp) / f"loop{repeat}")[
                b.warmup // block :
            ]
            if run.runtime.device.type == "cpu":
                peaks.append(measure_cpu_matmul_flops())
    eval_s = statistics.median(eval_seconds(run) for _ in range(3))
    if peaks:  # the CPU's peak measured between the repeats, like the steps
        peak_flops = statistics.median(peaks)
    step_s, loop_s = statistics.median(bare), statistics.median(loop)
    split = {k: statistics.median(s[k] for s in splits) for k in splits[0]}
    n_evals = evaluations(cfg)
    return {
        "what": "step",
        "bare_ms": 1000 * step_s,
        "loop_ms": 1000 * loop_s,
        "loop_overhead": loop_s / step_s - 1,
        "tokens_per_s": run.tokens_per_step / step_s,
        "mfu": flops * run.tokens_per_step / step_s / peak_flops if peak_flops else None,
        "loop_mfu": flops * run.tokens_per_step / loop_s / peak_flops if peak_flops else None,
        "peak_flops": peak_flops,
        "split_ms": {k: 1000 * v for k, v in split.items()},
        "eval_s": eval_s,
        "eval_share": n_evals * eval_s / (n_evals * eval_s + cfg.trainer.max_iters * loop_s),
        "peak_memory_mb": memory_mb,
        "samples": {"bare": len(bare), "loop": len(loop), "split": len(splits)},
    }


def evaluations(cfg: DictConfig) -> int:
    """Evaluations in a run: every trainer.eval_interval steps from step 0, and at the end."""
    t = cfg.trainer
    return t.max_iters // t.eval_interval + 1 + (t.max_iters % t.eval_interval > 0)


def bench_token_freq(cfg: DictConfig) -> dict[str, Any]:
    """An evaluation with metrics by token frequency (token_freq.bins, 10 when off) against
    the same evaluation without, alternated bench.repeats times in one process, and what the
    difference costs a run of trainer.max_iters steps evaluated every trainer.eval_interval."""
    run = setup(cfg)
    freq = frequency_bins(run.data.train_counts(), cfg.token_freq.scheme, cfg.token_freq.bins or 10)
    step_s = bare_steps(run, cfg.bench.warmup)
    plain, binned = [], []
    for repeat in range(cfg.bench.repeats):
        log.info(
            "repeat %d/%d: evaluation without, with frequency bins", repeat + 1, cfg.bench.repeats
        )
        plain.append(eval_seconds(run))
        binned.append(eval_seconds(run, freq))
    step_s = statistics.median([step_s, bare_steps(run, cfg.bench.warmup)])
    plain_s, binned_s = statistics.median(plain), statistics.median(binned)
    run_s = evaluations(cfg) * plain_s + cfg.trainer.max_iters * step_s
    return {
        "what": "token_freq",
        "bins": len(freq),
        "eval_s": plain_s,
        "eval_with_bins_s": binned_s,
        "eval_overhead": binned_s / plain_s - 1,
        "step_ms": 1000 * step_s,
        "run_overhead": evaluations(cfg) * (binned_s - plain_s) / run_s,
        "samples": len(plain),
    }


def bench_sharpness(cfg: DictConfig) -> dict[str, Any]:
    """What one sharpness measurement (sharpness.* keys) costs next to a training step: its
    seconds (median of bench.repeats), per Hessian-vector product, and its peak memory. The
    optimizer first takes bench.warmup steps, so Adam's preconditioned value is included."""
    OmegaConf.update(cfg, "sharpness.every", max(1, cfg.sharpness.every))
    run = setup(cfg)
    step_s = bare_steps(run, cfg.bench.warmup)
    probe = build_probe(run)
    lr = run.lr_at(cfg.bench.warmup)
    times = []
    reset_peak_memory(run.runtime.device)
    for _ in range(cfg.bench.repeats):
        sync(run.runtime.device)
        t0 = time.perf_counter()
        stats = probe.measure(run.optimizer, lr)
        sync(run.runtime.device)
        times.append(time.perf_counter() - t0)
    products = cfg.sharpness.lanczos_iters * (2 if "sharpness/precond_top1" in stats else 1)
    seconds = statistics.median(times)
    return {
        "what": "sharpness",
        "probe_tokens": probe.x.numel(),
        "measure_s": seconds,
        "hvp_ms": 1000 * seconds / products,
        "hvps": products,
        "train_steps_per_measurement": seconds / step_s,
        "peak_memory_mb": peak_memory_mb(run.runtime.device),
        **stats,
    }


def bench_compile(cfg: DictConfig) -> dict[str, Any]:
    """Eager against torch.compile: ms/step (median of blocks) and the time to compile."""
    b, block = cfg.bench, cfg.trainer.log_interval
    results = {}
    for compiled in (False, True):
        run = setup(OmegaConf.merge(cfg, {"compile": compiled}))
        t0 = time.perf_counter()
        first = bare_steps(run, 1)  # eager: warm-up; compiled: compilation happens here
        bare_steps(run, b.warmup)
        blocks = [bare_steps(run, block) for _ in range(b.repeats * b.steps // block)]
        results["compiled" if compiled else "eager"] = {
            "ms": 1000 * statistics.median(blocks),
            "first_step_s": first,
            "warmup_s": time.perf_counter() - t0,
        }
    eager, compiled = results["eager"], results["compiled"]
    return {
        "what": "compile",
        "eager_ms": eager["ms"],
        "compiled_ms": compiled["ms"],
        "speedup": eager["ms"] / compiled["ms"],
        "compile_s": compiled["first_step_s"] - eager["first_step_s"],
        "break_even_steps": max(
            0,
            math.ceil(
                (compiled["first_step_s"] - eager["first_step_s"])
                / max(1e-9, (eager["ms"] - compiled["ms"]) / 1000)
            ),
        )
        if eager["ms"] > compiled["ms"]
        else None,
    }


# Operator families of a training step, matched in order against the profiler's op names;
# every op run inside the optimizer's step (its elementwise updates) counts as `optimizer`.
OP_FAMILIES = [
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")),
    ("attention", ("attention", "flash")),
    ("gelu", ("gelu",)),
    ("layer_norm", ("layer_norm",)),
    ("loss", ("cross_entropy", "log_softmax", "nll_loss", "mse")),
]


def op_family(event: Any) -> str:
    """The family of a profiler event: `optimizer` under Optimizer.step, else by its name."""
    parent = event
    while parent is not None:
        if parent.name.startswith("Optimizer.step"):
            return "optimizer"
        parent = parent.cpu_parent
    lowered = event.name.lower()
    return next(
        (family for family, keys in OP_FAMILIES if any(k in lowered for k in keys)), "other"
    )


def self_time_by_family(events: Iterable[Any], cuda: bool) -> dict[str, float]:
    """Self time (µs) of each operator family over profiler events. On CUDA, the device time
    of the CPU-side ops, which carry the time of the kernels they launched: the kernel events
    themselves would count it a second time."""
    families: dict[str, float] = {}
    for e in events:
        if e.device_type != DeviceType.CPU:
            continue
        us = e.self_device_time_total if cuda else e.self_cpu_time_total
        if us:
            families[op_family(e)] = families.get(op_family(e), 0.0) + us
    return families


def bench_profile(cfg: DictConfig) -> dict[str, Any]:
    """torch.profiler over `bench.steps` bare steps: self time per operator family (per step and
    as a share), with the top-operator table in profile.txt next to bench.json."""
    run = setup(cfg)
    bare_steps(run, cfg.bench.warmup)
    cuda = run.runtime.device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        bare_steps(run, cfg.bench.steps)
    families = self_time_by_family(prof.events(), cuda)
    total = sum(families.values())
    sort_by = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    (out_dir / "profile.txt").write_text(prof.key_averages().table(sort_by=sort_by, row_limit=30))
    per_step = {
        k: v / 1000 / cfg.bench.steps for k, v in sorted(families.items(), key=lambda kv: -kv[1])
    }
    return {
        "what": "profile",
        "steps": cfg.bench.steps,
        "self_ms_per_step": per_step,
        "share": {k: v / (total / 1000 / cfg.bench.steps) for k, v in per_step.items()},
        "table": str(out_dir / "profile.txt"),
    }


class WorkerFailed(RuntimeError):
    """A benchmark's worker process raised or died; the message says which and why."""


def _head_worker(spec: dict[str, Any], out: Any) -> None:
    """One head variant in a fresh process, so its peak resident memory is its own. Puts its
    result, or the error that stopped it, on `out`."""
    try:
        out.put(_measure_head(spec))
    except BaseException as e:  # the parent reports it; a traceback here would be lost
        out.put({"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"})


def _measure_head(spec: dict[str, Any]) -> dict[str, float]:
    torch.manual_seed(0)
    # as training does
    runtime = Runtime.create(
        torch.device(spec["device"]), spec["dtype"], False, spec["keep_freed_memory"]
    )
    device = runtime.device
    cfg = OmegaConf.create(spec["loss"])
    # a long-tail loss's class statistic costs the same whatever the counts
    counts = torch.ones(spec["vocab_size"], device=device) if uses_class_counts(cfg) else None
    loss_fn = get_loss(cfg, counts)
    hidden = torch.randn(spec["tokens"], spec["n_embd"], device=device)
    weight = (
        0.02 * torch.randn(spec["vocab_size"], spec["n_embd"], device=device)
    ).requires_grad_()
    targets = torch.randint(spec["vocab_size"], (spec["tokens"],), device=device)

    def head(h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, weight)

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        h = hidden.clone().requires_grad_()
        weight.grad = None
        with runtime.autocast():
            if spec["chunk"]:
                loss = chunked_head_loss(
                    h,
                    targets,
                    head=head,
                    head_params=[weight],
                    loss_fn=loss_fn,
                    cfg=cfg,
                    chunk_tokens=spec["chunk"],
                )
            else:
                loss = loss_fn(head(h), targets, cfg)
        loss.backward()
        return h.grad, weight.grad

    sync(device)
    reset_peak_memory(device)
    base = peak_memory_mb(device) if device.type == "cuda" else _current_rss_mb()
    grads = run()
    sync(device)
    peak = peak_memory_mb(device) - base
    times = []
    for _ in range(spec["repeats"]):
        t0 = time.perf_counter()
        grads = run()
        sync(device)
        times.append(time.perf_counter() - t0)
    torch.save([g.float().cpu() for g in grads], spec["grads_path"])
    return {"peak_mb": peak, "ms": 1000 * statistics.median(times)}


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def run_worker(
    target: Callable[[dict[str, Any], Any], None], spec: dict[str, Any], name: str
) -> dict[str, float]:
    """Run target(spec, queue) in a fresh process and return what it puts on the queue; raise
    WorkerFailed with its error if it reported one, or with its exit code if it died without
    a result (out of memory, say): the parent never waits on a dead worker."""
    context = multiprocessing.get_context("spawn")  # a fresh process (and CUDA-safe)
    queue = context.Queue()
    worker = context.Process(target=target, args=(spec, queue))
    worker.start()
    while True:
        try:
            result = queue.get(timeout=0.5)
            break
        except Empty:
            if not worker.is_alive() and queue.empty():
                raise WorkerFailed(
                    f"the {name} died with exit code {worker.exitcode} and no result"
                ) from None
    worker.join()
    if "error" in result:
        raise WorkerFailed(f"the {name} failed: {result['error']}")
    return result


def bench_head(cfg: DictConfig) -> dict[str, Any]:
    """The whole output head against the chunked one: extra peak memory of forward + backward,
    time, and how far apart their gradients are."""
    h = cfg.bench.head
    runtime = runtime_of(cfg)
    chunk = head_chunk_tokens(h.chunk_tokens, h.vocab_size) or head_chunk_tokens("auto", 1 << 30)
    results, grads = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, chunk_tokens in (("whole", 0), ("chunked", chunk)):
            spec = {
                "device": str(runtime.device),
                "dtype": str(runtime.dtype).removeprefix("torch."),
                "loss": OmegaConf.to_container(cfg.loss),
                "tokens": h.tokens,
                "n_embd": h.n_embd,
                "vocab_size": h.vocab_size,
                "chunk": chunk_tokens,
                "repeats": cfg.bench.repeats,
                "grads_path": f"{tmp}/{name}.pt",
                "keep_freed_memory": cfg.cpu_keep_freed_memory,
            }
            log.info(
                "head %s: %d tokens, n_embd %d, vocabulary %d, %s",
                name,
                h.tokens,
                h.n_embd,
                h.vocab_size,
                spec["dtype"],
            )
            results[name] = run_worker(
                _head_worker, spec, f"{name} head ({spec['dtype']} on {spec['device']})"
            )
            grads[name] = torch.load(spec["grads_path"])
    rel = [
        float((c - w).abs().max() / w.abs().max()) for w, c in zip(grads["whole"], grads["chunked"])
    ]
    return {
        "what": "head",
        "loss": cfg.loss.name,
        "tokens": h.tokens,
        "n_embd": h.n_embd,
        "vocab_size": h.vocab_size,
        "chunk_tokens": chunk,
        "whole_peak_mb": results["whole"]["peak_mb"],
        "chunked_peak_mb": results["chunked"]["peak_mb"],
        "memory_ratio": results["chunked"]["peak_mb"] / results["whole"]["peak_mb"],
        "whole_ms": results["whole"]["ms"],
        "chunked_ms": results["chunked"]["ms"],
        "time_ratio": results["chunked"]["ms"] / results["whole"]["ms"],
        "grad_rel_diff_hidden": rel[0],
        "grad_rel_diff_weight": rel[1],
    }


def measured_steps(run: Run, noise: NoiseScale, n: int) -> float:
    """Seconds per step over n training steps whose gradient noise scale is measured, its
    averages folded at the end as the trainer does at a log."""
    sync(run.runtime.device)
    t0 = time.perf_counter()
    for _ in range(n):
        result = train_step(run)
        noise.observe(result.first_micro_sq, result.grad_norm.square())
    noise.metrics()
    sync(run.runtime.device)
    return (time.perf_counter() - t0) / n


def bench_noise_scale(cfg: DictConfig) -> dict[str, Any]:
    """The training step with the gradient noise scale measured against the same step without
    it, in one process: blocks of trainer.log_interval steps of each in turn, bench.steps of
    each per repeat; the medians and the measurement's share."""
    plain_cfg = cfg.copy()
    OmegaConf.update(plain_cfg, "noise_scale.enabled", False)
    OmegaConf.update(cfg, "noise_scale.enabled", True)
    plain, measured = setup(plain_cfg), setup(cfg)
    noise = build_noise_scale(measured)
    block = cfg.trainer.log_interval
    bare_steps(plain, cfg.bench.warmup)
    measured_steps(measured, noise, cfg.bench.warmup)
    plain_s, measured_s = [], []
    for repeat in range(cfg.bench.repeats):
        log.info("repeat %d/%d: without, with the noise scale", repeat + 1, cfg.bench.repeats)
        for _ in range(cfg.bench.steps // block):
            plain_s.append(bare_steps(plain, block))
            measured_s.append(measured_steps(measured, noise, block))
    plain_ms, measured_ms = 1000 * statistics.median(plain_s), 1000 * statistics.median(measured_s)
    return {
        "what": "noise_scale",
        "plain_ms": plain_ms,
        "measured_ms": measured_ms,
        "overhead": measured_ms / plain_ms - 1,
        "samples": len(plain_s),
    }


BENCHES: dict[str, Callable[[DictConfig], dict[str, Any]]] = {
    "step": bench_step,
    "compile": bench_compile,
    "head": bench_head,
    "profile": bench_profile,
    "sharpness": bench_sharpness,
    "noise_scale": bench_noise_scale,
    "token_freq": bench_token_freq,
}


def describe(cfg: DictConfig) -> dict[str, Any]:
    runtime = runtime_of(cfg)
    device = runtime.device
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "model": cfg.model.name,
        "loss": cfg.loss.name,
        "data": cfg.data.name,
        "dtype": str(runtime.dtype).removeprefix("torch."),
        "compile": runtime.compile,
        "batch": f"{cfg.trainer.batch_size} x {cfg.model.block_size} x {cfg.trainer.grad_accum}",
    }


def print_table(result: dict[str, Any]) -> None:
    width = max(len(k) for k in result)
    for key, value in result.items():
        if isinstance(value, dict):
            value = ", ".join(
                f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items()
            )
        elif isinstance(value, float):
            value = f"{value:.4g}"
        print(f"{key:<{width}}  {value}")


@contextlib.contextmanager
def worker_failures_exit() -> Iterator[None]:
    """A benchmark whose worker failed ends with its error in one line and exit code 1."""
    try:
        yield
    except WorkerFailed as e:
        log.error("%s", e)
        sys.exit(1)


@hydra.main(version_base="1.3", config_path="pkg://nanolab.configs", config_name="bench")
def main(cfg: DictConfig) -> None:
    with exit_on_config_error(log), worker_failures_exit():
        if cfg.bench.what not in BENCHES:
            raise ConfigError(f"bench.what={cfg.bench.what!r} is not one of {', '.join(BENCHES)}")
        for key in ("steps", "warmup", "repeats"):
            if not cfg.bench[key] > 0:
                raise ConfigError(f"bench.{key}={cfg.bench[key]} must be > 0")
        if (
            cfg.bench.steps % cfg.trainer.log_interval
            or cfg.bench.warmup % cfg.trainer.log_interval
        ):
            raise ConfigError(
                "bench.steps and bench.warmup must be multiples of "
                f"trainer.log_interval={cfg.trainer.log_interval}"
            )
        result = describe(cfg) | BENCHES[cfg.bench.what](cfg)
    path = Path(HydraConfig.get().runtime.output_dir) / "bench.json"
    write_json(path, result)
    print_table(result)
    print(f"written to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
