"""Try nanolab the way an adversarial tester would: bad values, bad files, runs that collide.

    python scripts/adversarial.py            # about 5 minutes on 2 cores; prints a table and the counts

Each case runs a command line in a fresh directory and is judged as a user would: a refused
case must exit with 2, print one line that names the key or file, show no traceback and leave
no files beyond Hydra's own record of the run (`.hydra/`, the log); an accepted case must exit
with 0. Progress lines a command logs before it stops (a download it attempts, say) are allowed; the
error itself must be one line. The data comes from NANOLAB_DATA_DIR, else the repository's
data/ folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=32", "trainer.batch_size=8",
        "trainer.eval_iters=2", "trainer.log_interval=1", "schedule.warmup_iters=1", "optim.lr=1e-2", "logger.mode=disabled"]
RUN = [*TINY, "trainer.max_iters=2", "trainer.eval_interval=2"]
HYDRA_RECORD = {".hydra", "train.log", "bench.log"}

# (name, module, arguments, expectation): "refused" or "ok". {run} is the case's run directory,
# {tmp} its scratch directory, {good} a finished run made once for the cases that need one.
CASES: list[tuple[str, str, list[str], str]] = []


def train_refused(name: str, *args: str) -> None:
    CASES.append((name, "nanolab.train", [*RUN, *args], "refused"))


for override in [
    "trainer.max_iters=abc", "trainer.batch_size=1.5", "optim.lr=abc", "trainer.on_nonfinite=maybe", "model.n_embd=12.5",
    "seed=1.5", "model.bias=sometimes", "data.tokenizer=bytes", "trainer.grad_clip=abc", "model.dropout=x",
    "trainer.save_checkpoints=maybe", "logger.init_timeout=abc", "data.val_fraction=abc", "trainer.eval_iters=1.5",
    "model.n_head=3", "model.n_layer=0", "model.block_size=200000", "trainer.batch_size=0", "trainer.max_iters=-5",
    "trainer.eval_interval=0", "trainer.grad_accum=0", "optim.lr=0", "optim.lr=-1", "optim.weight_decay=-0.1",
    "optim.fused=maybe", "compile=sometimes", "cpu_keep_freed_memory=maybe", "head_chunk_tokens=-8", "objective=val/acc",
    "loss.z_loss=-1", "device=cuda", "device=tpu", "dtype=float64", "logger.mode=sometimes", "resume=/nonexistent/last.pt",
    "threads=0", "threads=abc", "model.logit_softcap=-1", "model.dropout=1.5", "data.val_fraction=1.5", "data.shard_gb=0",
    "schedule.warmup_iters=-1", "data.source=foo", "trainer.grad_clip=-1", "hydra.run.dir=/proc/nanolab_out",
    "hydra.run.dir=${oc.env:NANOLAB_UNSET_VARIABLE}",
]:
    train_refused(override, override)
train_refused("block_size=100000 batch_size=1000", "model.block_size=100000", "trainer.batch_size=1000")
for loss, override in [("label_smoothing", "loss.epsilon=1.0"), ("label_smoothing", "loss.epsilon=-0.1"),
                       ("label_smoothing", "loss.epsilon=abc"), ("mse", "loss.k=0"), ("mse", "loss.M=-2"), ("focal", "loss.gamma=-1")]:
    train_refused(f"loss={loss} {override}", f"loss={loss}", override)
for group, override in [("optim=muon", "optim.adjust_lr_fn=foo"), ("optim=muon", "optim.adamw_lr=0"), ("optim=shampoo", "optim.graft=foo"),
                        ("optim=lion", "optim.betas=[0.9]"), ("schedule=wsd", "schedule.decay_shape=sqrt"),
                        ("schedule=wsd", "schedule.decay_frac=1.5"), ("optim=sgd", "optim.momentum=abc")]:
    train_refused(f"{group} {override}", group, override)
for override in ["sharpness.every=-1", "sharpness.k=abc", "sharpness.k=30", "sharpness.probe_tokens=0", "trainer.early_stop.patience=abc",
                 "trainer.early_stop.min_delta=-1", "trainer.full_batch=maybe", "data.train_tokens=abc", "data.train_tokens=10"]:
    train_refused(override, override)
train_refused("full_batch with windows batch_size does not divide", "trainer.full_batch=true", "data.train_tokens=1000", "trainer.batch_size=7")
train_refused("data.train_tokens beyond the split", "data.train_tokens=99999999")
train_refused("data=text without data.path", "data=text")
train_refused("data=text data.path=/nonexistent", "data=text", "data.path=/nonexistent/corpus.txt")
train_refused("data=text empty file", "data=text", "data.path={tmp}/empty.txt", "data.dir={tmp}/prepared")
train_refused("data=text not UTF-8", "data=text", "data.path={tmp}/latin1.txt", "data.dir={tmp}/prepared")
train_refused("data.raw_path missing, offline", "data.raw_path={tmp}/missing.txt", "data.dir={tmp}/prepared")
train_refused("resume=truncated checkpoint", "resume={tmp}/truncated.pt")
train_refused("resume=random bytes", "resume={tmp}/random.pt")
train_refused("a fresh run into a finished run's directory", "hydra.run.dir={good}")
train_refused("resume with loss=mse on a ce run", "hydra.run.dir={good}", "resume=true", "loss=mse")
train_refused("resume with another model width", "hydra.run.dir={good}", "resume=true", "model.n_embd=64")
train_refused("a run into a directory held by a live run", "hydra.run.dir={locked}")
CASES.append(("resume=true on a finished run", "nanolab.train", [*RUN, "hydra.run.dir={good}", "resume=true"], "ok"))
CASES.append(("resume=true, max_iters extended", "nanolab.train", [*TINY, "trainer.max_iters=4", "trainer.eval_interval=2",
                                                                   "hydra.run.dir={copy}", "resume=true"], "ok"))
for override in ["top_k=0", "seed=1.5", "num_samples=abc", "prompt=FILE:/nonexistent/prompt.txt", "temperature=-1",
                 "max_new_tokens=-1", "num_samples=0"]:
    CASES.append((f"sample {override}", "nanolab.sample", ["checkpoint={good}", override], "refused"))
CASES.append(("sample checkpoint=/nonexistent", "nanolab.sample", ["checkpoint=/nonexistent/best.pt"], "refused"))
CASES.append(("sample checkpoint=a directory without checkpoints", "nanolab.sample", ["checkpoint={tmp}"], "refused"))
for override in ["split=test", "batch_tokens=0", "dtype=float64", "checkpoint=/nonexistent/best.pt", "checkpoint={tmp}/random.pt"]:
    args = [override] if override.startswith("checkpoint") else ["checkpoint={good}", override]
    CASES.append((f"evaluate {override}", "nanolab.evaluate", args, "refused"))
CASES.append(("evaluate from another directory, no data there", "nanolab.evaluate@nodata", ["checkpoint={good}"], "refused"))
CASES.append(("evaluate from another directory with data.dir=", "nanolab.evaluate@nodata", ["checkpoint={good}", "data.dir={data}/shakespeare_char"], "ok"))
for override in ["bench.what=everything", "bench.steps=15", "bench.repeats=0", "bench.warmup=-1"]:
    CASES.append((f"bench {override}", "nanolab.bench", [*TINY, "trainer.log_interval=10", override, "hydra.run.dir={run}"], "refused"))
CASES.append(("compare a missing directory", "nanolab.compare", ["{tmp}/nothing"], "refused"))
CASES.append(("compare a directory without runs", "nanolab.compare", ["{tmp}/empty_dir"], "refused"))


def prepare_scratch(tmp: Path) -> None:
    (tmp / "empty.txt").write_text("")
    (tmp / "latin1.txt").write_bytes(b"caf\xe9 au lait")
    (tmp / "random.pt").write_bytes(os.urandom(4096))
    (tmp / "empty_dir").mkdir()


def main() -> int:
    data = Path(os.environ.get("NANOLAB_DATA_DIR", REPO / "data"))
    if not (data / "shakespeare_char" / "input.txt").is_file():
        print(f"the tiny Shakespeare text is needed at {data}/shakespeare_char/input.txt (or set NANOLAB_DATA_DIR)")
        return 2
    env = os.environ | {"NANOLAB_DATA_DIR": str(data), "WANDB_SILENT": "true"}
    root = Path(tempfile.mkdtemp(prefix="nanolab-adversarial-"))
    good = root / "good"
    subprocess.run([sys.executable, "-m", "nanolab.train", *RUN, f"hydra.run.dir={good}"], env=env, cwd=root, check=True, capture_output=True)
    (root / "truncated.pt").write_bytes((good / "last.pt").read_bytes()[:5000])
    locked = root / "locked"
    locked.mkdir()
    (locked / "run.lock").write_text(json.dumps({"pid": os.getpid(), "started": _start_time(os.getpid()), "host": os.uname().nodename}))
    results = []
    for number, (name, module, args, expected) in enumerate(CASES):
        tmp = root / f"case{number}"
        tmp.mkdir()
        prepare_scratch(tmp)
        copy = tmp / "copy"
        shutil.copytree(good, copy)
        cwd, case_env = tmp, env
        if module.endswith("@nodata"):
            module, case_env = module.split("@")[0], {k: v for k, v in env.items() if k != "NANOLAB_DATA_DIR"}
        values = {"run": tmp / "run", "tmp": tmp, "good": good, "copy": copy, "locked": locked, "data": data}
        argv = [a.format(**{k: str(v) for k, v in values.items()}) if "{" in a and "${" not in a else a for a in args]
        if module == "nanolab.train" and not any(a.startswith("hydra.run.dir=") for a in argv):
            argv.append(f"hydra.run.dir={tmp / 'run'}")
        before = _snapshot(good)
        proc = subprocess.run([sys.executable, "-m", module, *argv], cwd=cwd, env=case_env, capture_output=True, text=True, timeout=600)
        text = (proc.stdout + proc.stderr).strip()
        lines = [line for line in text.splitlines() if line.strip()]
        left = {p.name for p in (tmp / "run").iterdir()} - HYDRA_RECORD if (tmp / "run").is_dir() else set()
        good_touched = _snapshot(good) != before and "resume=true" in args and expected == "refused"
        if expected == "refused":
            error = lines[-1] if lines else ""
            one_line = bool(lines) and not any("ERROR" in line for line in lines[:-1]) and "Traceback" not in text
            clear = proc.returncode == 2 and one_line and bool(error) and not left and not good_touched
        else:
            clear = proc.returncode == 0 and "Traceback" not in text
        results.append((name, expected, proc.returncode, clear, lines[-1][:140] if lines else ""))
        print(f"{'ok ' if clear else 'BAD'} {proc.returncode:>3} {name:<55} {lines[-1][:110] if lines else ''}", flush=True)
    refused = [r for r in results if r[1] == "refused"]
    print(f"\n{len(results)} cases: {sum(r[3] for r in refused)} of {len(refused)} refused in one clear line with exit 2 and "
          f"nothing lost or written; {sum(r[3] for r in results if r[1] == 'ok')} of {len(results) - len(refused)} accepted as they should be")
    shutil.rmtree(root, ignore_errors=True)
    return 0 if all(r[3] for r in results) else 1


def _snapshot(directory: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in directory.rglob("*")}


def _start_time(pid: int) -> float:
    from nanolab.tracking import _process_start_time

    return _process_start_time(pid)


if __name__ == "__main__":
    sys.exit(main())
