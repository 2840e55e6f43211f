"""Measure training speed and memory for any model / loss / data config (the groups of train).

    python -m nanolab.bench                            # nano, ce: step, time split, MFU, harness cost
    python -m nanolab.bench model=baby loss=mse
    python -m nanolab.bench bench.what=head loss=mse   # the chunked output head against the whole one
    python -m nanolab.bench bench.what=compile model=baby
    python -m nanolab.bench bench.what=profile         # where a step's time goes (torch.profiler)

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
from pathlib import Path
from typing import Any, Callable

import hydra
from hydra.core.hydra_config import HydraConfig
import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn import functional as F

from nanolab import ConfigError, exit_on_config_error
from nanolab.atomic import write_json
from nanolab.data import BatchSampler, TokenData
from nanolab.distributed import World
from nanolab.losses import chunked_head_loss, get_loss, head_chunk_tokens
from nanolab.metrics import device_peak_flops, evaluate, flops_per_token, measure_cpu_matmul_flops
from nanolab.model import GPT, GPTConfig
from nanolab.optim import build_optimizer
from nanolab.tracking import RunInfo
from nanolab.train import (
    autocast_context,
    batch_loss,
    keep_freed_memory_for_reuse,
    pick_device,
    pick_dtype,
    seed_everything,
    train,
    train_step,
    use_compile,
)

log = logging.getLogger("nanolab.bench")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by tensors on CUDA; the process's peak resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class Setup:
    """Model, optimizer, sampler and loss as nanolab.train builds them from the same config."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.device = pick_device(cfg.device)
        self.dtype = pick_dtype(cfg.dtype, self.device)
        keep_freed_memory_for_reuse(cfg.cpu_keep_freed_memory, self.device)  # as training does
        self.autocast = autocast_context(self.device, self.dtype)
        self.loss_fn = get_loss(cfg.loss)
        seed_everything(cfg.seed)
        self.data = TokenData.load(cfg.data)
        self.data.check_block_size(cfg.model.block_size)
        config = GPTConfig(**{k: v for k, v in cfg.model.items() if k != "name"}, vocab_size=self.data.vocab_size)
        self.model = GPT(config).to(self.device)
        self.step_model = torch.compile(self.model) if use_compile(cfg.compile, self.device) else self.model
        self.head_chunk = head_chunk_tokens(cfg.head_chunk_tokens, config.vocab_size)
        self.optimizer = build_optimizer(self.model, cfg.optim, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        accum = cfg.trainer.grad_accum
        self.sampler = BatchSampler(self.data.train, cfg.trainer.batch_size, config.block_size, cfg.seed, self.device, range(accum))
        self.tokens_per_step = cfg.trainer.batch_size * config.block_size * cfg.trainer.grad_accum

    def bare_steps(self, n: int) -> float:
        """Seconds per step over n steps of train_step and nothing else."""
        sync(self.device)
        t0 = time.perf_counter()
        for _ in range(n):
            train_step(
                self.step_model, self.model, self.optimizer, self.scaler, self.sampler, self.loss_fn, self.cfg,
                self.autocast, self.head_chunk, self.cfg.trainer.grad_accum, World(),
            )
        sync(self.device)
        return (time.perf_counter() - t0) / n

    def split_step(self) -> dict[str, float]:
        """One step with a timer between its phases (seconds each)."""
        times, t = {}, time.perf_counter()

        def lap(name: str) -> None:
            nonlocal t
            sync(self.device)
            now = time.perf_counter()
            times[name] = times.get(name, 0.0) + now - t
            t = now

        accum = self.cfg.trainer.grad_accum
        for _ in range(accum):
            x, y = self.sampler.next_batch()
            lap("data")
            with self.autocast:
                loss = batch_loss(self.step_model, self.model, x, y, self.loss_fn, self.cfg.loss, self.head_chunk)
            lap("forward")
            self.scaler.scale(loss / accum).backward()
            lap("backward")
        self.scaler.unscale_(self.optimizer)
        clip = self.cfg.trainer.grad_clip if self.cfg.trainer.grad_clip > 0 else math.inf
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        lap("optimizer")
        return times

    def eval_seconds(self) -> float:
        sync(self.device)
        t0 = time.perf_counter()
        t = self.cfg.trainer
        evaluate(self.model, self.data, self.loss_fn, self.cfg.loss, t.batch_size, t.eval_iters, self.autocast, self.head_chunk)
        sync(self.device)
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
    setup = Setup(cfg)
    block = cfg.trainer.log_interval
    peak_flops = device_peak_flops(setup.device, setup.dtype)
    flops = flops_per_token(setup.model)
    log.info("warming up (%d steps)", b.warmup)
    setup.bare_steps(b.warmup)
    bare, loop, splits = [], [], []
    peaks = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(b.repeats):
            log.info("repeat %d/%d: bare, split, loop", repeat + 1, b.repeats)
            bare += [setup.bare_steps(block) for _ in range(b.steps // block)]
            splits += [setup.split_step() for _ in range(b.steps)]
            loop += loop_step_seconds(cfg, b.warmup + b.steps, Path(tmp) / f"loop{repeat}")[b.warmup // block :]
            if setup.device.type == "cpu":
                peaks.append(measure_cpu_matmul_flops())
    eval_s = statistics.median(setup.eval_seconds() for _ in range(3))
    if peaks:  # the CPU's peak measured between the repeats, like the steps
        peak_flops = statistics.median(peaks)
    step_s, loop_s = statistics.median(bare), statistics.median(loop)
    split = {k: statistics.median(s[k] for s in splits) for k in splits[0]}
    n_evals = cfg.trainer.max_iters // cfg.trainer.eval_interval + 1 + (cfg.trainer.max_iters % cfg.trainer.eval_interval > 0)
    return {
        "what": "step",
        "bare_ms": 1000 * step_s,
        "loop_ms": 1000 * loop_s,
        "loop_overhead": loop_s / step_s - 1,
        "tokens_per_s": setup.tokens_per_step / step_s,
        "mfu": flops * setup.tokens_per_step / step_s / peak_flops if peak_flops else None,
        "loop_mfu": flops * setup.tokens_per_step / loop_s / peak_flops if peak_flops else None,
        "peak_flops": peak_flops,
        "split_ms": {k: 1000 * v for k, v in split.items()},
        "eval_s": eval_s,
        "eval_share": n_evals * eval_s / (n_evals * eval_s + cfg.trainer.max_iters * loop_s),
        "peak_memory_mb": peak_memory_mb(setup.device),
        "samples": {"bare": len(bare), "loop": len(loop), "split": len(splits)},
    }


def bench_compile(cfg: DictConfig) -> dict[str, Any]:
    """Eager against torch.compile: ms/step (median of blocks) and the time to compile."""
    b, block = cfg.bench, cfg.trainer.log_interval
    results = {}
    for compiled in (False, True):
        setup = Setup(OmegaConf.merge(cfg, {"compile": compiled}))
        t0 = time.perf_counter()
        first = setup.bare_steps(1)  # eager: warm-up; compiled: compilation happens here
        setup.bare_steps(b.warmup)
        blocks = [setup.bare_steps(block) for _ in range(b.repeats * b.steps // block)]
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
        "break_even_steps": max(0, math.ceil((compiled["first_step_s"] - eager["first_step_s"]) / max(1e-9, (eager["ms"] - compiled["ms"]) / 1000)))
        if eager["ms"] > compiled["ms"] else None,
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
    return next((family for family, keys in OP_FAMILIES if any(k in lowered for k in keys)), "other")


def bench_profile(cfg: DictConfig) -> dict[str, Any]:
    """torch.profiler over `bench.steps` bare steps: self time per operator family (per step and
    as a share), with the top-operator table in profile.txt next to bench.json."""
    setup = Setup(cfg)
    setup.bare_steps(cfg.bench.warmup)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if setup.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        setup.bare_steps(cfg.bench.steps)
    cuda = setup.device.type == "cuda"
    families: dict[str, float] = {}
    for e in prof.events():
        us = e.self_device_time_total if cuda else e.self_cpu_time_total
        if us:
            families[op_family(e)] = families.get(op_family(e), 0.0) + us
    total = sum(families.values())
    sort_by = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    (out_dir / "profile.txt").write_text(prof.key_averages().table(sort_by=sort_by, row_limit=30))
    per_step = {k: v / 1000 / cfg.bench.steps for k, v in sorted(families.items(), key=lambda kv: -kv[1])}
    return {
        "what": "profile",
        "steps": cfg.bench.steps,
        "self_ms_per_step": per_step,
        "share": {k: v / (total / 1000 / cfg.bench.steps) for k, v in per_step.items()},
        "table": str(out_dir / "profile.txt"),
    }


def _head_worker(spec: dict[str, Any], out: Any) -> None:
    """One head variant in a fresh process, so its peak resident memory is its own."""
    torch.manual_seed(0)
    device = torch.device(spec["device"])
    keep_freed_memory_for_reuse(spec["keep_freed_memory"], device)  # as training does
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[spec["dtype"]]
    cfg = OmegaConf.create(spec["loss"])
    loss_fn = get_loss(cfg)
    hidden = torch.randn(spec["tokens"], spec["n_embd"], device=device)
    weight = (0.02 * torch.randn(spec["vocab_size"], spec["n_embd"], device=device)).requires_grad_()
    targets = torch.randint(spec["vocab_size"], (spec["tokens"],), device=device)

    def head(h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, weight)

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        h = hidden.clone().requires_grad_()
        weight.grad = None
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            if spec["chunk"]:
                loss = chunked_head_loss(h, targets, head, [weight], loss_fn, cfg, spec["chunk"])
            else:
                loss = loss_fn(head(h), targets, cfg)
        loss.backward()
        return h.grad, weight.grad

    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
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
    out.put({"peak_mb": peak, "ms": 1000 * statistics.median(times)})


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def bench_head(cfg: DictConfig) -> dict[str, Any]:
    """The whole output head against the chunked one: extra peak memory of forward + backward,
    time, and how far apart their gradients are."""
    h = cfg.bench.head
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    chunk = head_chunk_tokens(h.chunk_tokens, h.vocab_size) or head_chunk_tokens("auto", 1 << 30)
    context = multiprocessing.get_context("spawn")  # a fresh process per variant (and CUDA-safe)
    results, grads = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, chunk_tokens in (("whole", 0), ("chunked", chunk)):
            spec = {
                "device": str(device), "dtype": str(dtype).removeprefix("torch."), "loss": OmegaConf.to_container(cfg.loss),
                "tokens": h.tokens, "n_embd": h.n_embd, "vocab_size": h.vocab_size, "chunk": chunk_tokens,
                "repeats": cfg.bench.repeats, "grads_path": f"{tmp}/{name}.pt", "keep_freed_memory": cfg.cpu_keep_freed_memory,
            }
            log.info("head %s: %d tokens, n_embd %d, vocabulary %d", name, h.tokens, h.n_embd, h.vocab_size)
            queue = context.Queue()
            worker = context.Process(target=_head_worker, args=(spec, queue))
            worker.start()
            results[name] = queue.get()
            worker.join()
            grads[name] = torch.load(spec["grads_path"])
    rel = [float((c - w).abs().max() / w.abs().max()) for w, c in zip(grads["whole"], grads["chunked"])]
    return {
        "what": "head",
        "loss": cfg.loss.name,
        "tokens": h.tokens, "n_embd": h.n_embd, "vocab_size": h.vocab_size, "chunk_tokens": chunk,
        "whole_peak_mb": results["whole"]["peak_mb"], "chunked_peak_mb": results["chunked"]["peak_mb"],
        "memory_ratio": results["chunked"]["peak_mb"] / results["whole"]["peak_mb"],
        "whole_ms": results["whole"]["ms"], "chunked_ms": results["chunked"]["ms"],
        "time_ratio": results["chunked"]["ms"] / results["whole"]["ms"],
        "grad_rel_diff_hidden": rel[0], "grad_rel_diff_weight": rel[1],
    }


BENCHES: dict[str, Callable[[DictConfig], dict[str, Any]]] = {
    "step": bench_step, "compile": bench_compile, "head": bench_head, "profile": bench_profile,
}


def describe(cfg: DictConfig) -> dict[str, Any]:
    device = pick_device(cfg.device)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "model": cfg.model.name, "loss": cfg.loss.name, "data": cfg.data.name, "dtype": cfg.dtype,
        "compile": use_compile(cfg.compile, device), "batch": f"{cfg.trainer.batch_size} x {cfg.model.block_size} x {cfg.trainer.grad_accum}",
    }


def print_table(result: dict[str, Any]) -> None:
    width = max(len(k) for k in result)
    for key, value in result.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items())
        elif isinstance(value, float):
            value = f"{value:.4g}"
        print(f"{key:<{width}}  {value}")


@hydra.main(version_base="1.3", config_path="pkg://nanolab.configs", config_name="bench")
def main(cfg: DictConfig) -> None:
    with exit_on_config_error(log):
        if cfg.bench.what not in BENCHES:
            raise ConfigError(f"bench.what={cfg.bench.what!r} is not one of {', '.join(BENCHES)}")
        for key in ("steps", "warmup", "repeats"):
            if not cfg.bench[key] > 0:
                raise ConfigError(f"bench.{key}={cfg.bench[key]} must be > 0")
        if cfg.bench.steps % cfg.trainer.log_interval or cfg.bench.warmup % cfg.trainer.log_interval:
            raise ConfigError(f"bench.steps and bench.warmup must be multiples of trainer.log_interval={cfg.trainer.log_interval}")
        result = describe(cfg) | BENCHES[cfg.bench.what](cfg)
    path = Path(HydraConfig.get().runtime.output_dir) / "bench.json"
    write_json(path, result)
    print_table(result)
    print(f"written to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
