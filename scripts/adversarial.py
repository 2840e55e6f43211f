"""Try nanolab the way an adversarial tester would: bad values, bad files, runs that collide.

    python scripts/adversarial.py   # about 5 minutes on 2 cores; prints a table and the counts

Each case runs a command line in a fresh directory and is judged as a user would: a refused case
must exit with 2, print one line that names the key or file, show no traceback and leave no files
beyond Hydra's own record of the run (`.hydra/`, the log); an accepted case must exit with 0; a
`failed` one (a sweep whose jobs were refused) with 1 and no traceback. A case may also name files
that must not appear and folders that must stay as they were: what a downloaded checkpoint asks for
is never fetched, written or deleted. Progress lines a command logs before it stops (a download it
attempts, say) are allowed; the error itself must be one line. The data comes from NANOLAB_DATA_DIR,
else the repository's data/ folder.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=32",
    "model.block_size=32",
    "trainer.batch_size=8",
    "trainer.eval_iters=2",
    "trainer.log_interval=1",
    "schedule.warmup_iters=1",
    "optim.lr=1e-2",
    "logger.mode=disabled",
]
RUN = [*TINY, "trainer.max_iters=2", "trainer.eval_interval=2"]
HYDRA_RECORD = {".hydra", "train.log", "bench.log"}

# (name, module, arguments, expectation, checks): expectation "refused", "ok" or "failed";
# checks: paths that must not exist ("absent"), folders that must be left as they were
# ("unchanged") and words the last line must hold ("says"). {run} is the case's run directory, {tmp}
# its scratch directory, {good} a
# finished run and {sweep} a finished two-job sweep, both made once for the cases that need them.
CASES: list[tuple[str, str, list[str], str, dict[str, list[str]]]] = []


def train_refused(name: str, *args: str) -> None:
    CASES.append((name, "nanolab.train", [*RUN, *args], "refused", {}))


for override in [
    "trainer.max_iters=abc",
    "trainer.batch_size=1.5",
    "optim.lr=abc",
    "trainer.on_nonfinite=maybe",
    "model.n_embd=12.5",
    "seed=1.5",
    "model.bias=sometimes",
    "data.tokenizer=bytes",
    "trainer.grad_clip=abc",
    "model.dropout=x",
    "trainer.save_checkpoints=maybe",
    "logger.init_timeout=abc",
    "data.val_fraction=abc",
    "trainer.eval_iters=1.5",
    "model.n_head=3",
    "model.n_layer=0",
    "model.block_size=200000",
    "trainer.batch_size=0",
    "trainer.max_iters=-5",
    "trainer.eval_interval=0",
    "trainer.grad_accum=0",
    "optim.lr=0",
    "optim.lr=-1",
    "optim.weight_decay=-0.1",
    "optim.fused=maybe",
    "compile=sometimes",
    "cpu_keep_freed_memory=maybe",
    "head_chunk_tokens=-8",
    "objective=val/acc",
    "loss.z_loss=-1",
    "device=cuda",
    "device=tpu",
    "dtype=float64",
    "logger.mode=sometimes",
    "resume=/nonexistent/last.pt",
    "threads=0",
    "threads=abc",
    "model.logit_softcap=-1",
    "model.dropout=1.5",
    "data.val_fraction=1.5",
    "data.shard_gb=0",
    "schedule.warmup_iters=-1",
    "data.source=foo",
    "trainer.grad_clip=-1",
    "hydra.run.dir=/proc/nanolab_out",
    "hydra.run.dir=${oc.env:NANOLAB_UNSET_VARIABLE}",
    "sparsity.final=1.0",
    "sparsity.final=-0.5",
    "sparsity.scope=rows",
    "sparsity.l1=-1",
    "model.head_dim=0",
]:
    train_refused(override, override)
train_refused(
    "a sparsity schedule ending before it starts",
    "sparsity.final=0.5",
    "sparsity.start=50",
    "sparsity.end=20",
)
train_refused(
    "block_size=100000 batch_size=1000", "model.block_size=100000", "trainer.batch_size=1000"
)
for loss, override in [
    ("label_smoothing", "loss.epsilon=1.0"),
    ("label_smoothing", "loss.epsilon=-0.1"),
    ("label_smoothing", "loss.epsilon=abc"),
    ("mse", "loss.k=0"),
    ("mse", "loss.M=-2"),
    ("focal", "loss.gamma=-1"),
    ("logit_adjusted", "loss.tau=-1"),
    ("class_balanced", "loss.beta=1"),
    ("logit_adjusted", "loss.class_counts={tmp}/missing.npy"),
    ("class_balanced", "loss.class_counts={tmp}/prior12.npy"),
]:
    train_refused(f"loss={loss} {override}", f"loss={loss}", override)
for group, override in [
    ("optim=muon", "optim.adjust_lr_fn=foo"),
    ("optim=muon", "optim.adamw_lr=0"),
    ("optim=shampoo", "optim.graft=foo"),
    ("optim=lion", "optim.betas=[0.9]"),
    ("schedule=wsd", "schedule.decay_shape=sqrt"),
    ("schedule=wsd", "schedule.decay_frac=1.5"),
    ("optim=sgd", "optim.momentum=abc"),
]:
    train_refused(f"{group} {override}", group, override)
for override in [
    "sharpness.every=-1",
    "sharpness.k=abc",
    "sharpness.k=30",
    "sharpness.probe_tokens=0",
    "trainer.early_stop.patience=abc",
    "trainer.early_stop.min_delta=-1",
    "trainer.full_batch=maybe",
    "data.train_tokens=abc",
    "data.train_tokens=10",
    "token_freq.scheme=zipf",
    "token_freq.bins=-1",
]:
    train_refused(override, override)
train_refused(
    "full_batch with windows batch_size does not divide",
    "trainer.full_batch=true",
    "data.train_tokens=1000",
    "trainer.batch_size=7",
)
train_refused("data.train_tokens beyond the split", "data.train_tokens=99999999")
train_refused("data=text without data.path", "data=text")
train_refused("data=text data.path=/nonexistent", "data=text", "data.path=/nonexistent/corpus.txt")
train_refused(
    "data=text empty file", "data=text", "data.path={tmp}/empty.txt", "data.dir={tmp}/prepared"
)
train_refused(
    "data=text not UTF-8", "data=text", "data.path={tmp}/latin1.txt", "data.dir={tmp}/prepared"
)
train_refused(
    "data.raw_path missing, offline", "data.raw_path={tmp}/missing.txt", "data.dir={tmp}/prepared"
)
train_refused("resume=truncated checkpoint", "resume={tmp}/truncated.pt")
train_refused("resume=random bytes", "resume={tmp}/random.pt")
train_refused("a fresh run into a finished run's directory", "hydra.run.dir={good}")
train_refused("resume with loss=mse on a ce run", "hydra.run.dir={good}", "resume=true", "loss=mse")
train_refused(
    "resume with another model width", "hydra.run.dir={good}", "resume=true", "model.n_embd=64"
)
train_refused("a run into a directory held by a live run", "hydra.run.dir={locked}")
CASES.append(
    (
        "resume=true on a finished run",
        "nanolab.train",
        [*RUN, "hydra.run.dir={good}", "resume=true"],
        "ok",
        {},
    )
)
CASES.append(
    (
        "resume=true, max_iters extended",
        "nanolab.train",
        [
            *TINY,
            "trainer.max_iters=4",
            "trainer.eval_interval=2",
            "hydra.run.dir={copy}",
            "resume=true",
        ],
        "ok",
        {},
    )
)
for override in [
    "top_k=0",
    "seed=1.5",
    "num_samples=abc",
    "prompt=FILE:/nonexistent/prompt.txt",
    "temperature=-1",
    "max_new_tokens=-1",
    "num_samples=0",
]:
    CASES.append(
        (f"sample {override}", "nanolab.sample", ["checkpoint={good}", override], "refused", {})
    )
CASES.append(
    (
        "sample checkpoint=/nonexistent",
        "nanolab.sample",
        ["checkpoint=/nonexistent/best.pt"],
        "refused",
        {},
    )
)
CASES.append(
    (
        "sample checkpoint=a directory without checkpoints",
        "nanolab.sample",
        ["checkpoint={tmp}"],
        "refused",
        {},
    )
)
for override in [
    "method=random",
    "amounts=[1.5]",
    "scope=rows",
    "method=structured amounts=[0.9]",
    "method=imp amounts=[0.5] rewind_step=100000",
    "measure_batch=0",
]:
    CASES.append(
        (
            f"prune {override}",
            "nanolab.prune",
            ["checkpoint={good}", *override.split()],
            "refused",
            {},
        )
    )
for override in ["quantize=int4", "quantize=int8 dtype=bfloat16"]:
    CASES.append(
        (
            f"evaluate {override}",
            "nanolab.evaluate",
            ["checkpoint={good}", *override.split()],
            "refused",
            {},
        )
    )
CASES.append(
    (
        "sample quantize=int4",
        "nanolab.sample",
        ["checkpoint={good}", "quantize=int4"],
        "refused",
        {},
    )
)
for override in [
    "split=test",
    "batch_tokens=0",
    "dtype=float64",
    "checkpoint=/nonexistent/best.pt",
    "checkpoint={tmp}/random.pt",
]:
    args = [override] if override.startswith("checkpoint") else ["checkpoint={good}", override]
    CASES.append((f"evaluate {override}", "nanolab.evaluate", args, "refused", {}))
CASES.append(
    (
        "evaluate from another directory: the run's own data",
        "nanolab.evaluate@nodata",
        ["checkpoint={good}"],
        "ok",
        {},
    )
)
CASES.append(
    (
        "evaluate from another directory, its data nowhere",
        "nanolab.evaluate@nodata",
        ["checkpoint={tmp}/evil_dir.pt"],
        "refused",
        {"unchanged": ["{tmp}/other_files"]},
    )
)
CASES.append(
    (
        "evaluate from another directory with data.dir=",
        "nanolab.evaluate@nodata",
        ["checkpoint={good}", "data.dir={data}/shakespeare_char"],
        "ok",
        {},
    )
)
for override in ["bench.what=everything", "bench.steps=15", "bench.repeats=0", "bench.warmup=-1"]:
    CASES.append(
        (
            f"bench {override}",
            "nanolab.bench",
            [*TINY, "trainer.log_interval=10", override, "hydra.run.dir={run}"],
            "refused",
            {},
        )
    )
CASES.append(("compare a missing directory", "nanolab.compare", ["{tmp}/nothing"], "refused", {}))
CASES.append(
    ("compare a directory without runs", "nanolab.compare", ["{tmp}/empty_dir"], "refused", {})
)


# Issue 33: files from elsewhere decide nothing.
for override in ["schedule.min_lr=-1e-4", "trainer.early_stop.min_delta=nan"]:
    train_refused(override, override)
train_refused("schedule=wsd schedule.total_iters=0", "schedule=wsd", "schedule.total_iters=0")
CASES.append(
    (
        "resume with another optimizer, every changed key allowed",
        "nanolab.train",
        [
            *RUN,
            "hydra.run.dir={good}",
            "resume=true",
            "trainer.max_iters=4",
            "optim=sgd",
            "allow_changes=[optim.name,optim.betas,optim.eps,optim.fused,optim.momentum,optim.nesterov,optim.weight_decay]",
        ],
        "refused",
        {"says": ["fresh_optimizer=true"]},
    )
)
CASES.append(
    (
        "init_from a folder with weights but no config.json",
        "nanolab.train",
        [*RUN, "init_from={tmp}/hf_no_config"],
        "refused",
        {"says": ["init_from=", "no config.json"]},
    )
)
NEVER = {"absent": ["{tmp}/site/x.pth", "{tmp}/victim"]}
CASES.append(
    (
        "evaluate a checkpoint naming a data: URL and raw_path",
        "nanolab.evaluate",
        ["checkpoint={tmp}/evil_url.pt"],
        "ok",
        NEVER,
    )
)
CASES.append(
    (
        "prune a checkpoint naming a data: URL and raw_path",
        "nanolab.prune",
        ["checkpoint={tmp}/evil_url.pt", "amounts=[0]", "out={tmp}/report"],
        "ok",
        NEVER,
    )
)
CASES.append(
    (
        "evaluate a checkpoint whose data.dir holds other files",
        "nanolab.evaluate",
        ["checkpoint={tmp}/evil_dir.pt"],
        "ok",
        {"unchanged": ["{tmp}/other_files"]},
    )
)
CASES.append(
    (
        "prune a checkpoint whose data.dir holds other files",
        "nanolab.prune",
        ["checkpoint={tmp}/evil_dir.pt", "amounts=[0]", "out={tmp}/report"],
        "ok",
        {"unchanged": ["{tmp}/other_files"]},
    )
)
CASES.append(
    (
        "evaluate on prepared data of another vocabulary",
        "nanolab.evaluate",
        ["checkpoint={good}", "data.dir={tmp}/other_vocab"],
        "refused",
        {"unchanged": ["{tmp}/other_vocab"]},
    )
)
CASES.append(
    (
        "evaluate a checkpoint whose loss name is ${oc.env:HOME}",
        "nanolab.evaluate",
        ["checkpoint={tmp}/evil_env.pt"],
        "refused",
        {},
    )
)
CASES.append(
    (
        "evaluate a Hugging Face folder with a torn config.json",
        "nanolab.evaluate",
        ["checkpoint={tmp}/hf_torn", "data.dir={data}/shakespeare_char"],
        "refused",
        {},
    )
)
CASES.append(
    (
        "a finished sweep relaunched without resume=true",
        "nanolab.train",
        ["-m", "loss=ce,mse", *RUN, "hydra.sweep.dir={sweep}"],
        "failed",
        {"unchanged": ["{sweep}/0_loss=ce/last.pt", "{sweep}/1_loss=mse/last.pt"]},
    )
)
CASES.append(("compare a folder of damaged runs", "nanolab.compare", ["{tmp}/damaged"], "ok", {}))


def prepare_scratch(tmp: Path, good: Path) -> None:
    (tmp / "empty.txt").write_text("")
    (tmp / "latin1.txt").write_bytes(b"caf\xe9 au lait")
    (tmp / "random.pt").write_bytes(os.urandom(4096))
    # class counts for a 12-token vocabulary: not the character data's 65
    np.save(tmp / "prior12.npy", np.arange(12))
    (tmp / "empty_dir").mkdir()
    payload = base64.b64encode(b"import os; os.system('touch PWNED')").decode()
    craft(
        good / "last.pt",
        tmp / "evil_url.pt",
        {
            "url": f"data:text/plain;base64,{payload}",
            "raw_path": str(tmp / "site" / "x.pth"),
            "dir": str(tmp / "victim"),
        },
        data_dir=str(tmp / "victim"),
    )
    (tmp / "other_files").mkdir()
    (tmp / "other_files" / "train.bin").write_bytes(b"someone else's tokens")
    craft(
        good / "last.pt",
        tmp / "evil_dir.pt",
        {"dir": str(tmp / "other_files"), "source": "text", "path": str(tmp / "other_files")},
        data_dir=str(tmp / "other_files"),
    )
    craft(good / "last.pt", tmp / "evil_env.pt", {}, loss_name="${oc.env:HOME}")
    other = tmp / "other_vocab"  # prepared data of a three-character text
    other.mkdir()
    for split in ("train", "val"):
        (other / f"{split}.bin").write_bytes(bytes(200))
    (other / "meta.json").write_text(
        json.dumps(
            {
                "name": "other",
                "source_hash": "x",
                "tokenizer": "char",
                "vocab_size": 3,
                "dtype": "uint16",
                "chars": ["a", "b", "c"],
                "train_tokens": 100,
                "val_tokens": 100,
            }
        )
    )
    (tmp / "hf_no_config").mkdir()
    (tmp / "hf_no_config" / "model.safetensors").write_bytes(b"{}")
    (tmp / "hf_torn").mkdir()
    (tmp / "hf_torn" / "config.json").write_text('{"model_type": "gpt2", "n_lay')
    damaged = tmp / "damaged" / "0_run"
    damaged.mkdir(parents=True)
    (damaged / "summary.json").write_text("[1, 2]")
    (damaged / "metrics.jsonl").write_text(
        '{"step": 0, "time_s": 1.0, "val/ce": 4.0, "val/acc": '
        '0.1}\n\x00\x00\n[3]\n{"step": 2, "val/ce": 3.0}\n'
    )


def craft(
    source: Path,
    path: Path,
    data: dict[str, str],
    data_dir: str | None = None,
    loss_name: str | None = None,
) -> None:
    """A checkpoint as someone else might hand it over: the good run's, its config edited."""
    import torch

    state = torch.load(source, map_location="cpu", weights_only=True)
    state["config"]["data"] |= data
    if loss_name is not None:
        state["config"]["loss"]["name"] = loss_name
    state["data_dir"] = data_dir
    torch.save(state, path)


def main() -> int:
    data = Path(os.environ.get("NANOLAB_DATA_DIR", REPO / "data"))
    if not (data / "shakespeare_char" / "input.txt").is_file():
        print(
            "the tiny Shakespeare text is needed at "
            f"{data}/shakespeare_char/input.txt (or set NANOLAB_DATA_DIR)"
        )
        return 2
    env = os.environ | {"NANOLAB_DATA_DIR": str(data), "WANDB_SILENT": "true"}
    root = Path(tempfile.mkdtemp(prefix="nanolab-adversarial-"))
    good = root / "good"
    subprocess.run(
        [sys.executable, "-m", "nanolab.train", *RUN, f"hydra.run.dir={good}"],
        env=env,
        cwd=root,
        check=True,
        capture_output=True,
    )
    sweep = root / "sweep"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "nanolab.train",
            "-m",
            "loss=ce,mse",
            *RUN,
            f"hydra.sweep.dir={sweep}",
        ],
        env=env,
        cwd=root,
        check=True,
        capture_output=True,
    )
    (root / "truncated.pt").write_bytes((good / "last.pt").read_bytes()[:5000])
    locked = root / "locked"
    locked.mkdir()
    (locked / "run.lock").write_text(
        json.dumps(
            {"pid": os.getpid(), "started": _start_time(os.getpid()), "host": os.uname().nodename}
        )
    )
    results = []
    for number, (name, module, args, expected, checks) in enumerate(CASES):
        tmp = root / f"case{number}"
        tmp.mkdir()
        prepare_scratch(tmp, good)
        copy = tmp / "copy"
        shutil.copytree(good, copy)
        cwd, case_env = tmp, env
        if module.endswith("@nodata"):
            module, case_env = (
                module.split("@")[0],
                {k: v for k, v in env.items() if k != "NANOLAB_DATA_DIR"},
            )
        values = {
            "run": tmp / "run",
            "tmp": tmp,
            "good": good,
            "copy": copy,
            "locked": locked,
            "data": data,
            "sweep": sweep,
        }
        argv = [
            a.format(**{k: str(v) for k, v in values.items()}) if "{" in a and "${" not in a else a
            for a in args
        ]
        absent = [Path(p.format(**values)) for p in checks.get("absent", [])]
        unchanged = {
            Path(p.format(**values)): _snapshot(Path(p.format(**values)))
            for p in checks.get("unchanged", [])
        }
        if module == "nanolab.train" and not any(
            a.startswith(("hydra.run.dir=", "hydra.sweep.dir=")) for a in argv
        ):
            argv.append(f"hydra.run.dir={tmp / 'run'}")
        before = _snapshot(good)
        proc = subprocess.run(
            [sys.executable, "-m", module, *argv],
            cwd=cwd,
            env=case_env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        text = (proc.stdout + proc.stderr).strip()
        lines = [line for line in text.splitlines() if line.strip()]
        left = (
            {p.name for p in (tmp / "run").iterdir()} - HYDRA_RECORD
            if (tmp / "run").is_dir()
            else set()
        )
        good_touched = _snapshot(good) != before and "resume=true" in args and expected == "refused"
        kept = not any(p.exists() for p in absent) and all(
            _snapshot(p) == files for p, files in unchanged.items()
        )
        kept = kept and all(word in (lines[-1] if lines else "") for word in checks.get("says", []))
        if expected == "refused":
            error = lines[-1] if lines else ""
            one_line = (
                bool(lines)
                and not any("ERROR" in line for line in lines[:-1])
                and "Traceback" not in text
            )
            clear = (
                proc.returncode == 2
                and one_line
                and bool(error)
                and not left
                and not good_touched
                and kept
            )
        else:
            clear = (
                proc.returncode == (0 if expected == "ok" else 1)
                and "Traceback" not in text
                and kept
            )
        results.append((name, expected, proc.returncode, clear, lines[-1][:140] if lines else ""))
        print(
            f"{'ok ' if clear else 'BAD'} {proc.returncode:>3} "
            f"{name:<55} {lines[-1][:110] if lines else ''}",
            flush=True,
        )
    refused = [r for r in results if r[1] == "refused"]
    print(
        f"\n{len(results)} cases: {sum(r[3] for r in refused)} of {len(refused)} refused in one "
        "clear line with exit 2 and nothing lost or written; "
        f"{sum(r[3] for r in results if r[1] != 'refused')} of {len(results) - len(refused)} "
        "accepted (or failed with exit 1) as they should be"
    )
    shutil.rmtree(root, ignore_errors=True)
    return 0 if all(r[3] for r in results) else 1


def _snapshot(path: Path) -> dict[str, tuple[int, bytes]]:
    """Each file at or under `path` with its modification time and bytes."""
    files = [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []
    return {str(p): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"") for p in files}


def _start_time(pid: int) -> float:
    from nanolab.launch import _process_start_time

    return _process_start_time(pid)


if __name__ == "__main__":
    sys.exit(main())
