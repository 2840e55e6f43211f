"""The GPU paths nanolab has never run, measured in one go (scripts/gpu_check.sh calls this).

    bash scripts/gpu_check.sh results/gpu_check        # on a CUDA machine: 9 minutes on one H100
    bash scripts/gpu_check.sh --dry-run /tmp/gpu_check  # the same sequence, tiny, on CPU (in CI)

Each check runs as its own command, with a time limit, and a failing check is recorded (its
command, exit code and the end of its output) without stopping the others:
- bench: `nanolab.bench model=gpt2` (124M, context 1024, bfloat16, torch.compile) for ce, mse and
  label_smoothing: ms/step, tokens/s, MFU, peak memory;
- head: the chunked output head against the whole one at GPT-2's 50,257 tokens;
- kernels: which scaled-dot-product-attention kernel a training step runs (profiler), and
  whether AdamW runs fused;
- torchrun: one process with nccl, stopped by SIGTERM after its first checkpoint (its
  trainer.max_iters is out of reach, so the stop is certain however fast the steps), then
  resumed for a few more steps to the end;
- quickstart: `python -m nanolab.train` on the GPU, its wall time and val/ce;
- sparsity: `nanolab.prune measure=true int8=true method=structured` on the quick start's model:
  memory, ms per forward pass and sampling tokens/s of the dense, half-pruned and int8 models.
Everything goes into <out>/gpu_check.json and <out>/gpu_check.md, and each check's own files
(bench.json, run directories, logs) under <out>/<check>/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def sizes(dry_run: bool) -> dict[str, list[str]]:
    """The overrides of each check: the real ones, or tiny CPU ones that exercise the same code."""
    if dry_run:
        tiny = [
            "model=nano",
            "model.n_layer=1",
            "model.n_embd=32",
            "model.n_head=2",
            "model.block_size=32",
            "trainer.batch_size=4",
            "device=cpu",
            "dtype=float32",
            "compile=false",
            "threads=1",
            "logger=none",
        ]
        return {
            "bench": [
                *tiny,
                "data=shakespeare",
                "trainer.log_interval=5",
                "trainer.eval_iters=2",
                "bench.steps=5",
                "bench.warmup=5",
                "bench.repeats=1",
            ],
            "head": [
                "bench.what=head",
                "device=cpu",
                "dtype=float32",
                "threads=1",
                "bench.head.tokens=512",
                "bench.head.n_embd=64",
                "bench.repeats=1",
            ],
            "torchrun": [*tiny, "trainer.eval_interval=5", "trainer.eval_iters=2"],
            "quickstart": [
                *tiny,
                "trainer.max_iters=20",
                "trainer.eval_interval=10",
                "trainer.eval_iters=2",
            ],
        }
    gpt2 = [
        "model=gpt2",
        "data=shakespeare",
        "dtype=bfloat16",
        "compile=true",
        "trainer.batch_size=16",
        "logger=none",
    ]
    return {
        "bench": [
            *gpt2,
            "trainer.log_interval=10",
            "bench.steps=30",
            "bench.warmup=20",
            "bench.repeats=1",
        ],
        "head": ["bench.what=head", "dtype=bfloat16", "bench.head.tokens=16384", "bench.repeats=3"],
        "torchrun": [
            *gpt2[:4],
            "compile=false",
            "trainer.batch_size=8",
            "trainer.eval_interval=25",
            "trainer.eval_iters=5",
            "logger=none",
        ],
        "quickstart": ["logger=none"],
    }


def run(
    cmd: list[str], log: Path, timeout: float, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run a command with its output in `log`; its exit code, seconds and output's end."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(log, "w") as out:
        try:
            code = subprocess.run(
                cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, env=env
            ).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    result = {"command": " ".join(cmd), "exit": code, "seconds": round(time.time() - t0, 1)}
    if code != 0:
        result["output_tail"] = log.read_text()[-1500:]
    return result


def check_bench(out: Path, overrides: list[str], dry_run: bool) -> dict[str, Any]:
    results = {}
    for loss in ("ce", "mse", "label_smoothing"):
        directory = out / "bench" / loss
        outcome = run(
            [
                PYTHON,
                "-m",
                "nanolab.bench",
                f"loss={loss}",
                *overrides,
                f"hydra.run.dir={directory}",
            ],
            directory / "log.txt",
            240,
        )
        if outcome["exit"] == 0:
            bench = json.loads((directory / "bench.json").read_text())
            outcome |= {
                k: bench[k]
                for k in (
                    "device",
                    "bare_ms",
                    "loop_ms",
                    "tokens_per_s",
                    "mfu",
                    "peak_memory_mb",
                    "split_ms",
                )
                if k in bench
            }
        results[loss] = outcome
    return results


def check_head(out: Path, overrides: list[str], dry_run: bool) -> dict[str, Any]:
    directory = out / "head"
    outcome = run(
        [PYTHON, "-m", "nanolab.bench", *overrides, f"hydra.run.dir={directory}"],
        directory / "log.txt",
        180,
    )
    if outcome["exit"] == 0:
        outcome |= json.loads((directory / "bench.json").read_text())
    return outcome


def check_kernels(out: Path, dry_run: bool) -> dict[str, Any]:
    """The attention kernel of a training step (from the profiler's op names) and AdamW's kernel."""
    from omegaconf import OmegaConf
    from torch.profiler import ProfilerActivity, profile

    from nanolab.model import GPT, GPTConfig
    from nanolab.optim import build_optimizer

    device = torch.device("cpu" if dry_run else "cuda")
    config = GPTConfig(
        n_layer=2, n_head=12, n_embd=768, block_size=1024, vocab_size=50257, bias=False
    )
    model = GPT(config).to(device)
    optim_cfg = OmegaConf.load(REPO / "configs" / "optim" / "adamw.yaml")
    optimizer = build_optimizer(model, optim_cfg, device)
    x = torch.randint(50257, (2 if dry_run else 8, 128 if dry_run else 1024), device=device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with profile(activities=activities) as prof:
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            loss = model(x).float().logsumexp(-1).mean()
        loss.backward()
        optimizer.step()
    names = sorted(
        {
            e.name
            for e in prof.events()
            if "attention" in e.name.lower() or "flash" in e.name.lower()
        }
    )
    kernel = next(
        (k for k in ("flash", "efficient", "cudnn", "math") if any(k in n.lower() for n in names)),
        "unknown",
    )
    return {
        "device": str(device),
        "sdpa_ops": names[:12],
        "attention_kernel": kernel,
        "flash": any("flash" in n.lower() for n in names),
        "adamw_fused": bool(optimizer.param_groups[0].get("fused")),
    }


# The first segment's trainer.max_iters: never reached, so the SIGTERM sent once its first
# checkpoint exists always finds it running (a short run could end first: a race with the clock).
UNREACHED = 10**9
RESUMED_STEPS = 20  # the resumed segment runs this many steps past the stop checkpoint


def check_torchrun(out: Path, overrides: list[str], dry_run: bool) -> dict[str, Any]:
    """Under torchrun (nccl on CUDA): SIGTERM once the first checkpoint exists, then resume
    for RESUMED_STEPS more steps."""
    directory = out / "torchrun" / "run"
    cmd = [
        PYTHON,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=1",
        "-m",
        "nanolab.train",
        *overrides,
        f"hydra.run.dir={directory}",
    ]
    log = out / "torchrun" / "first.txt"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [*cmd, f"trainer.max_iters={UNREACHED}"],
            cwd=REPO,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + 240
        while (
            proc.poll() is None and not (directory / "last.pt").exists() and time.time() < deadline
        ):
            time.sleep(0.5)
        stopped_by = "sigterm" if proc.poll() is None else "ended on its own"
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        first_exit = proc.wait(timeout=120)
    first, first_records = read_run(directory)
    stopped_at = max((r["step"] for r in first_records), default=0)
    resumed = run(
        [*cmd, f"trainer.max_iters={stopped_at + RESUMED_STEPS}", "resume=true"],
        out / "torchrun" / "resume.txt",
        300,
    )
    summary, records = read_run(directory)
    train_steps = [r["step"] for r in records if "train/loss" in r]
    return {
        "first_segment": {
            "stopped_by": stopped_by,
            "exit": first_exit,
            "status": first.get("status"),
            "last_step": max((r["step"] for r in first_records), default=None),
        },
        "resume": resumed,
        "status": summary.get("status"),
        "best_val_ce": summary.get("best/val/ce"),
        "train_steps_logged_twice": len(train_steps) - len(set(train_steps)),
    }


def read_run(directory: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A run directory's summary.json and metrics.jsonl records (empty where missing)."""
    summary = (
        json.loads((directory / "summary.json").read_text())
        if (directory / "summary.json").exists()
        else {}
    )
    metrics = directory / "metrics.jsonl"
    return summary, [
        json.loads(line) for line in metrics.read_text().splitlines()
    ] if metrics.exists() else []


def check_quickstart(out: Path, overrides: list[str], dry_run: bool) -> dict[str, Any]:
    directory = out / "quickstart"
    outcome = run(
        [PYTHON, "-m", "nanolab.train", *overrides, f"hydra.run.dir={directory}"],
        out / "quickstart.txt",
        300,
    )
    if (directory / "summary.json").exists():
        summary = json.loads((directory / "summary.json").read_text())
        outcome |= {
            k: summary.get(k)
            for k in (
                "status",
                "wall_time_s",
                "best/val/ce",
                "final/val/ce",
                "final/val/ce_calibrated",
                "final/val/acc",
            )
        }
    return outcome


MEASURED = ("memory_bytes", "forward_ms", "sample_tok_s_b1", "sample_tok_s_batched", "val/ce")


def check_sparsity(out: Path, dry_run: bool) -> dict[str, Any]:
    """The quick start's model dense, without half its heads and neurons, and int8, measured."""
    report = out / "sparsity"
    outcome = run(
        [
            PYTHON,
            "-m",
            "nanolab.prune",
            f"checkpoint={out / 'quickstart' / 'last.pt'}",
            "method=structured",
            "amounts=[0,0.5]",
            "int8=true",
            "measure=true",
            f"device={'cpu' if dry_run else 'cuda'}",
            f"out={report}",
        ],
        out / "sparsity.txt",
        300,
    )
    if (report / "prune.json").exists():
        rows = json.loads((report / "prune.json").read_text())["results"]
        outcome["rows"] = [
            {"amount": r["amount"], "weights": r["weights"], **{k: r.get(k) for k in MEASURED}}
            for r in rows
        ]
    return outcome


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# GPU check "
        f"({'dry run on CPU' if report['dry_run'] else report['environment']['device']})",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in report["environment"].items()]
    lines += [
        "",
        "## bench (model=gpt2, bfloat16, compile)"
        if not report["dry_run"]
        else "## bench (tiny, CPU)",
        "",
        "| loss | exit | ms/step (bare) | ms/step (loop) | tokens/s | MFU | peak MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for loss, b in report["bench"].items():
        cells = [
            b.get("bare_ms"),
            b.get("loop_ms"),
            b.get("tokens_per_s"),
            b.get("mfu"),
            b.get("peak_memory_mb"),
        ]
        lines.append(
            f"| {loss} | {b['exit']} | "
            + " | ".join("" if c is None else f"{c:.4g}" for c in cells)
            + " |"
        )
    head = report["head"]
    lines += ["", "## chunked head against the whole head", ""]
    lines += [
        f"- {k}: {head.get(k)}"
        for k in (
            "exit",
            "vocab_size",
            "tokens",
            "whole_peak_mb",
            "chunked_peak_mb",
            "memory_ratio",
            "whole_ms",
            "chunked_ms",
            "time_ratio",
        )
    ]
    lines += ["", "## kernels", ""] + [f"- {k}: {v}" for k, v in report["kernels"].items()]
    lines += ["", "## torchrun: SIGTERM after the first checkpoint, then resume", ""] + [
        f"- {k}: {v}" for k, v in report["torchrun"].items() if k != "resume"
    ]
    lines += [f"- resume exit: {report['torchrun']['resume']['exit']}"]
    lines += ["", "## quick start", ""] + [
        f"- {k}: {v}" for k, v in report["quickstart"].items() if k != "output_tail"
    ]
    lines += ["", "## sparsity and int8 (structured pruning of the quick start's model)", ""]
    lines += [f"- exit: {report['sparsity']['exit']}"] + [
        "- " + ", ".join(f"{k} {v}" for k, v in row.items())
        for row in report["sparsity"].get("rows", [])
    ]
    lines += [
        "",
        f"Total: {report['seconds']:.0f} s. Failed checks: "
        f"{', '.join(report['failed']) or 'none'}.",
        "",
    ]
    return "\n".join(lines)


def failed(report: dict[str, Any]) -> list[str]:
    bad = [f"bench {loss}" for loss, b in report["bench"].items() if b["exit"] != 0]
    bad += ["head"] * (report["head"]["exit"] != 0)
    bad += ["kernels"] * ("error" in report["kernels"])
    torchrun = report["torchrun"]
    bad += ["torchrun"] * (
        torchrun["first_segment"]["status"] != "interrupted"
        or torchrun.get("status") != "finished"
        or torchrun.get("train_steps_logged_twice", 1) != 0
    )
    bad += ["quickstart"] * (report["quickstart"].get("status") != "finished")
    bad += ["sparsity"] * (report["sparsity"]["exit"] != 0)
    return bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "out", type=Path, help="folder for gpu_check.json, gpu_check.md and each check's files"
    )
    parser.add_argument("--dry-run", action="store_true", help="the same checks, tiny, on CPU")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device here: run on a GPU machine, or use --dry-run", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    overrides, t0 = sizes(args.dry_run), time.time()
    report: dict[str, Any] = {
        "dry_run": args.dry_run,
        "environment": {
            "device": torch.cuda.get_device_name()
            if torch.cuda.is_available() and not args.dry_run
            else "cpu",
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
            "commit": subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
            ).stdout.strip(),
            "date": time.strftime("%Y-%m-%d %H:%M"),
        },
    }
    report["bench"] = check_bench(args.out, overrides["bench"], args.dry_run)
    report["head"] = check_head(args.out, overrides["head"], args.dry_run)
    try:
        report["kernels"] = check_kernels(args.out, args.dry_run)
    except Exception as e:  # recorded, and the other checks still run
        report["kernels"] = {"error": f"{type(e).__name__}: {e}"}
    report["torchrun"] = check_torchrun(args.out, overrides["torchrun"], args.dry_run)
    report["quickstart"] = check_quickstart(args.out, overrides["quickstart"], args.dry_run)
    report["sparsity"] = check_sparsity(args.out, args.dry_run)
    report["seconds"] = time.time() - t0
    report["failed"] = failed(report)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    (args.out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
