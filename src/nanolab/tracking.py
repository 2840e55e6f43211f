"""Run tracking: a W&B run plus local files in the run directory, so results exist without W&B.

- metrics.jsonl: one JSON object per logged point ({"step", "tokens", "time_s", metric...});
- summary.json: status (finished / failed), the best val/ce and the final metrics.

W&B mode `auto` means online when wandb itself finds credentials (WANDB_API_KEY, an identity
token, its settings file or netrc), otherwise offline; WANDB_MODE in the environment wins over
`auto`. A W&B run that cannot start (bad key, no network) falls back to offline, then to none,
with a warning: W&B trouble never stops training.

The W&B run holds each step once, also across resumes; its config is the resolved one (device,
dtype, parameters, git commit; no logger keys); its summary keeps each validation metric's best
(min or max) and last value, while summary.json keeps the `final/*` values.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from nanolab import ENDED_AS_PLANNED, EXIT_CONFIG_ERROR, ConfigError, Diverged, Interrupted
from nanolab.atomic import atomic_path, unwritable, write_json
from nanolab.checkpoint import (
    load_checkpoint,
    requested_resume,
    resume_changes,
    resume_checkpoint_path,
)
from nanolab.config import check_config

log = logging.getLogger(__name__)


@dataclass
class RunInfo:
    """Where a run writes and how it is labelled on W&B."""

    dir: Path
    group: str | None
    name: str | None
    multirun: bool = False
    job_num: int | None = None  # a multirun job's number


def hydra_run_info(cfg: DictConfig) -> RunInfo:
    """Run directory, W&B group and name from Hydra's runtime, unless set in `logger`.

    A multirun's jobs share the group `<experiment>-<sweep dir>` and are named by the keys the
    sweep varies (`loss=mse,optim.lr=0.001`); a single run is grouped by its experiment, if
    any, and named by all its overrides. The seed is always part of the name: runs that differ
    only by seed are replicates, and their names must say so.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    group = wandb_group(
        cfg.logger.group,
        hc.runtime.choices.get("experiment"),
        Path(hc.sweep.dir) if multirun else None,
    )
    name = hc.job.override_dirname
    if multirun:
        swept = _swept_keys(Path(hc.sweep.dir), hc.sweeper.get("params") or {})
        name = (
            ",".join(o for o in hc.overrides.task if o.split("=", 1)[0].lstrip("+~") in swept)
            or name
        )
    if "seed" not in {o.split("=", 1)[0].lstrip("+~") for o in name.split(",")}:
        name = f"{name},seed={cfg.seed}" if name else f"seed={cfg.seed}"
    return RunInfo(
        dir=Path(hc.runtime.output_dir),
        group=group,
        name=cfg.logger.name or name,
        multirun=hc.mode == RunMode.MULTIRUN,
        job_num=hc.job.num if hc.mode == RunMode.MULTIRUN else None,
    )


def wandb_group(
    configured: str | None, experiment: str | None, sweep_dir: Path | None
) -> str | None:
    """A run's W&B group: logger.group if set; else, for a multirun job, `<experiment>-<sweep
    dir name>` (or the sweep dir name); else the experiment, if any."""
    if configured:
        return configured
    if sweep_dir is None:
        return experiment
    return f"{experiment}-{sweep_dir.name}" if experiment else sweep_dir.name


def _swept_keys(sweep_dir: Path, sweeper_params: DictConfig | dict) -> set[str]:
    """Keys a multirun varies: sweep overrides of its command line (which the sweeper saves in
    multirun.yaml before launching jobs) and the sweeper's params (set by experiment files)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = set(sweeper_params)
    try:
        command_line = OmegaConf.load(sweep_dir / "multirun.yaml").hydra.overrides.task
    except (OSError, AttributeError):
        return keys
    overrides = OverridesParser.create().parse_overrides(list(command_line))
    return keys | {o.key_or_group for o in overrides if o.is_sweep_override()}


def safe_dirname(overrides: str, max_len: int = 120) -> str:
    """A job directory name from an override string: no '/', and at most max_len characters
    (a long one keeps its start and a hash of the whole), so any override list makes a valid
    file name. Registered as the `safe_dirname` resolver used by hydra.sweep.subdir."""
    name = overrides.replace("/", "%")
    if len(name) <= max_len:
        return name
    return f"{name[: max_len - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def launch_time(fmt: str) -> str:
    """The time a run was launched, formatted: the `launch_time` resolver of the run and sweep
    directories. Hydra's `now` would differ between the processes that torchrun starts (each
    resolves it on its own) and scatter one run over several directories, so under torchrun
    it is the start time of the torchrun process that spawned them; NANOLAB_LAUNCH_TIME (Unix
    seconds) overrides it, for several nodes: `export NANOLAB_LAUNCH_TIME=$(date +%s)` before
    srun. Otherwise it is now."""
    if os.environ.get("NANOLAB_LAUNCH_TIME"):
        try:
            t = float(os.environ["NANOLAB_LAUNCH_TIME"])
        except ValueError:
            raise ValueError(
                f"NANOLAB_LAUNCH_TIME={os.environ['NANOLAB_LAUNCH_TIME']!r} must be Unix seconds: export NANOLAB_LAUNCH_TIME=$(date +%s)"
            ) from None
    elif "TORCHELASTIC_RUN_ID" in os.environ and Path(f"/proc/{os.getppid()}/stat").exists():
        t = _process_start_time(os.getppid())
    else:
        t = time.time()
    return time.strftime(fmt, time.localtime(t))


def launch_id() -> str:
    """Six hex characters that tell apart runs launched in the same second (the `launch_id`
    resolver, after launch_time in the default run and sweep directories), and are the same
    for every process of one launch: derived from NANOLAB_LAUNCH_TIME (and SLURM_JOB_ID) when
    it is set, as on several nodes; under torchrun from the torchrun process; otherwise from
    this process and the moment it asks."""
    if os.environ.get("NANOLAB_LAUNCH_TIME"):
        key = f"env:{os.environ['NANOLAB_LAUNCH_TIME']}:{os.environ.get('SLURM_JOB_ID', '')}"
    elif "TORCHELASTIC_RUN_ID" in os.environ and Path(f"/proc/{os.getppid()}/stat").exists():
        key = f"torchrun:{os.getppid()}:{_process_start_time(os.getppid())}"
    else:
        key = f"process:{os.getpid()}:{time.time_ns()}"
    return hashlib.sha1(key.encode()).hexdigest()[:6]


def _process_start_time(pid: int) -> float:
    """Unix time at which process `pid` started, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    boot = next(
        int(line.split()[1])
        for line in Path("/proc/stat").read_text().splitlines()
        if line.startswith("btime")
    )
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def wandb_api_key_available() -> bool:
    """Whether wandb finds credentials for its host, wherever it keeps them (environment,
    identity token file, settings file, netrc): asked of wandb's own login, silently. Not
    silent, wandb.login greets the user through its service process, which calls the server:
    offline, that hung the process for minutes."""
    from wandb.sdk.wandb_login import _login

    try:
        found, _ = _login(verify=False, prompt=False, update_api_key=False, _silent=True)
        return bool(found)
    # a malformed key or settings file: offline, and wandb.init will say why online fails
    except Exception:
        return False


def resolve_wandb_mode(mode: str) -> str:
    if mode not in ("auto", "online", "offline", "disabled"):
        raise ConfigError(f"logger.mode={mode!r} is not one of auto, online, offline, disabled")
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if wandb_api_key_available() else "offline"


class Tracker:
    """Logs metrics to W&B and metrics.jsonl; use as a context manager so that the run is always
    finished, with a failing exit code when training raised. Disabled (the other ranks of a
    DDP run), it keeps the summary in memory and writes nothing."""

    def __init__(
        self,
        cfg: DictConfig,
        info: RunInfo,
        run_id: str,
        resume_step: int | None = None,
        enabled: bool = True,
        resolved: dict[str, Any] | None = None,
    ) -> None:
        """`resolved`: what the run's setup decided (device, dtype, parameters, ...), added to
        the W&B config in place of the `auto` settings."""
        self.enabled = enabled
        self.summary: dict[str, Any] = {}
        self.status = "finished"  # how the run ends without an exception: finished | early_stopped
        self.run = None
        if not enabled:
            return
        self.dir = info.dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.dir / "metrics.jsonl"
        # A resumed run replays the steps after its checkpoint; a fresh one starts a new file.
        # Its clock goes on from the last kept record, so time_s and wall_time_s count the time
        # the kept history took over all segments (not the work a kill threw away).
        elapsed, self.kept = self._drop_records_after(
            resume_step if resume_step is not None else -1
        )
        self.t0 = time.time() - elapsed
        self.last_step, self.last_tokens = resume_step or 0, 0
        # W&B's history holds each record once: its row index (W&B's _step) is the record's
        # place in metrics.jsonl. A resumed run replays the records after its checkpoint (the
        # same values: resume is exact); the rows W&B already holds are not sent again, the
        # ones it lost when the run was killed (still in flight) are sent from the file.
        self.row = len(self.kept)
        self._warned = False
        self.run = self._start_wandb(
            cfg, info, run_id, resolved or {}, resumed=resume_step is not None
        )
        self.wandb_rows = 0
        if self.run is not None and resume_step is not None:  # a fresh W&B run holds nothing yet
            self.wandb_rows = self._rows_in_wandb(run_id)
            for row, line in enumerate(self.kept[self.wandb_rows :], start=self.wandb_rows):
                self._send(json.loads(line), row)

    def _rows_in_wandb(self, run_id: str) -> int:
        """History rows the W&B run holds from earlier segments: the server's count online, the
        earlier segments' files offline (or, if they cannot be read, the records kept)."""
        if self.mode == "online":
            return self.run.step
        try:
            return offline_rows(self.dir / "wandb", run_id, before=self.run)
        except (OSError, subprocess.SubprocessError, ValueError, KeyError) as e:
            log.warning(
                "could not read the earlier W&B segments (%s); assuming they hold the %d records kept",
                e,
                len(self.kept),
            )
            return len(self.kept)

    def _drop_records_after(self, step: int) -> tuple[float, list[str]]:
        """Keep the records up to `step`, less status markers (an `interrupted` line is stale
        once the run goes on). Returns the time_s of the last one kept and the kept lines."""
        if not self.metrics_path.exists():
            return 0.0, []
        kept, elapsed = [], 0.0
        for line in self.metrics_path.read_text().splitlines():
            try:
                record = json.loads(line)
                if record["step"] <= step and "status" not in record:
                    kept.append(line + "\n")
                    elapsed = max(elapsed, record.get("time_s", 0.0))
            except (ValueError, KeyError, TypeError):  # a line torn by a kill mid-write
                continue
        with atomic_path(self.metrics_path) as tmp:
            tmp.write_text("".join(kept))
        return elapsed, kept

    def _start_wandb(
        self, cfg: DictConfig, info: RunInfo, run_id: str, resolved: dict[str, Any], resumed: bool
    ):
        mode = resolve_wandb_mode(cfg.logger.mode)
        if mode == "disabled":
            return None
        import wandb

        tags = sorted({cfg.loss.name, cfg.model.name, cfg.data.name, *cfg.logger.tags})
        for attempt in (mode, "offline") if mode == "online" else (mode,):
            try:
                run = wandb.init(
                    project=cfg.logger.project,
                    entity=cfg.logger.entity,
                    group=info.group,
                    name=info.name,
                    tags=tags,
                    config=wandb_config(cfg, resolved),
                    dir=str(self.dir),
                    id=run_id,
                    resume="allow" if resumed else None,
                    mode=attempt,
                    job_type="train",
                    reinit="create_new",  # each job of a multirun is its own run
                    settings=wandb.Settings(init_timeout=cfg.logger.init_timeout),
                )
            except Exception as e:  # wandb raises many kinds; none may stop training
                log.warning("W&B could not start in %s mode (%s)", attempt, str(e).splitlines()[0])
                # forget the failed attempt, or the retry finds its run id "in use"
                wandb.teardown()
                continue
            # Plot everything against the optimizer step, also after a resume rewinds it; every
            # point also carries `tokens` (tokens seen), the x-axis to compare batch sizes.
            run.define_metric("step")
            run.define_metric("tokens", summary="max")
            run.define_metric("*", step_metric="step")
            # the best value beside the last, in place of best/* and final/* keys
            for name, best in summary_metrics():
                run.define_metric(name, step_metric="step", summary=f"{best},last")
            self._save_hydra_record(run)
            # online, or offline after a failed online start: what _rows_in_wandb asks
            self.mode = attempt
            return run
        log.warning("continuing without W&B; metrics go to %s", self.metrics_path)
        return None

    def log(self, metrics: dict[str, Any], step: int, tokens: int, to_wandb: bool = True) -> None:
        """Append a record to metrics.jsonl and send it to W&B, unless W&B holds it already."""
        if not self.enabled:
            return
        self.last_step, self.last_tokens = step, tokens
        record = {
            "step": step,
            "tokens": tokens,
            "time_s": round(time.time() - self.t0, 3),
            **metrics,
        }
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if to_wandb:
            if self.row >= self.wandb_rows:
                self._send(record, self.row)
            self.row += 1

    def _send(self, record: dict[str, Any], row: int) -> None:
        if self.run is None:
            return
        try:
            self.run.log(record, step=row)
        except Exception as e:
            if not self._warned:
                log.warning("W&B logging failed (%s); metrics.jsonl keeps everything", e)
                self._warned = True

    def update_summary(self, values: dict[str, Any]) -> None:
        """summary.json gets every value; W&B's summary not the best/final copies of metrics it
        summarises itself (define_metric)."""
        self.summary.update(values)
        if self.run is not None:
            self.run.summary.update(
                {
                    k: v
                    for k, v in values.items()
                    if not k.startswith(("final/", "best/val/", "best/train_eval/"))
                }
            )

    def _save_hydra_record(self, run: Any) -> None:
        """The run's Hydra record (config.yaml, hydra.yaml, overrides.yaml of every segment) in
        the W&B run's files."""
        for path in sorted((self.dir / ".hydra").rglob("*.yaml")):
            run.save(str(path), base_path=str(self.dir), policy="now")

    def log_checkpoint(self, path: Path, aliases: list[str]) -> None:
        """Log a checkpoint file as a W&B model artifact (logger.log_checkpoints)."""
        if self.run is None or not path.exists():
            return
        import wandb

        try:
            artifact = wandb.Artifact(
                f"model-{self.run.id}",
                type="model",
                metadata={"step": self.summary.get("best/step")},
            )
            artifact.add_file(str(path))
            self.run.log_artifact(artifact, aliases=aliases)
        except Exception as e:  # W&B trouble never costs the run
            log.warning("W&B could not log %s as an artifact (%s)", path, e)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.enabled:
            return
        self.update_summary(
            outcome(exc, self.status) | {"wall_time_s": round(time.time() - self.t0, 3)}
        )
        try:
            # W&B has the run's state and summary; the local file needs a marker
            if exc is not None:
                self.log(
                    {"status": self.summary["status"]},
                    self.last_step,
                    self.last_tokens,
                    to_wandb=False,
                )
            write_json(self.dir / "summary.json", self.summary)
        except OSError as e:  # a full disk: the error that ended the run is the one to report
            log.error(
                "could not write %s (%s); the run ended as %s",
                self.dir / "summary.json",
                e.strerror or e,
                self.summary["status"],
            )
        if self.run is not None:
            self.run.finish(exit_code=0 if exc is None else 1)


def offline_rows(wandb_dir: Path, run_id: str, before: Any) -> int:
    """How many history rows the earlier offline segments of run `run_id` hold (one .wandb file
    per segment), read by wandb's own reader; `before`: the segment now running, not counted."""
    current = Path(before.settings.sync_file).resolve()
    rows = 0
    for path in sorted(wandb_dir.glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")):
        if path.resolve() == current:
            continue
        out = subprocess.run(
            [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        steps = [
            json.loads(line)["history"]["item"].get("_step", 0)
            for line in out.splitlines()
            if '"type":"history"' in line
        ]
        rows = max(rows, 1 + max(steps, default=-1))
    return rows


SPLITS = ("train_eval", "val")
LOWER_IS_BETTER = ("loss", "ce", "ce_calibrated", "ppl", "bpt", "brier", "ece")
HIGHER_IS_BETTER = ("acc", "acc_top5")


def summary_metrics() -> list[tuple[str, str]]:
    """(metric, min | max) for each evaluated metric whose best W&B keeps in its summary."""
    return [(f"{split}/{m}", "min") for split in SPLITS for m in LOWER_IS_BETTER] + [
        (f"{split}/{m}", "max") for split in SPLITS for m in HIGHER_IS_BETTER
    ]


def wandb_config(cfg: DictConfig, resolved: dict[str, Any]) -> dict[str, Any]:
    """The W&B run config: the run's config resolved, without the logger's own keys (they do
    not change what a run computes), with what setup decided in place of `auto`."""
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("logger", None)
    return config | resolved


def git_state(path: Path = Path(__file__).parent) -> dict[str, Any]:
    """The commit of the nanolab source a run uses and whether tracked files differ from it;
    None for both outside a git checkout (an installed wheel)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=path,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}


def outcome(exc: BaseException | None, ended: str = "finished") -> dict[str, str]:
    """How a run ended, for summary.json and W&B: `status` (finished, early_stopped, diverged,
    interrupted or failed) and, unless it ended as planned (`ended`), the `error` that ended it."""
    if exc is None:
        return {"status": ended}
    if isinstance(exc, Diverged):
        status = "diverged"
    elif isinstance(exc, (Interrupted, KeyboardInterrupt)):
        status = "interrupted"
    else:
        status = "failed"
    return {"status": status, "error": f"{type(exc).__name__}: {exc}"}


def record_failure(run_dir: Path, exc: BaseException) -> None:
    """Leave a summary.json for a multirun job that failed before its tracker started (a bad
    config value), so the sweep report can say which job failed and why."""
    if not (run_dir / "summary.json").exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "summary.json", outcome(exc))


OmegaConf.register_new_resolver("safe_dirname", safe_dirname, replace=True)
# as Hydra's now
OmegaConf.register_new_resolver("launch_time", launch_time, use_cache=True, replace=True)
OmegaConf.register_new_resolver("launch_id", launch_id, use_cache=True, replace=True)
# Integer division for configs that derive one size from another (experiment=model_size keeps
# the head size: n_head = ${div:${model.n_embd},32}).
OmegaConf.register_new_resolver("div", lambda a, b: int(a) // int(b), replace=True)


def hydra_record(output_dir: str) -> str:
    """Where Hydra writes a run's record (config.yaml, overrides.yaml): .hydra for a run's first
    segment, .hydra/resume-<n> for the n-th resumed one, so that neither a later nor a refused
    segment overwrites the first's (which nanolab.compare reads). The `hydra_record` resolver
    of hydra.output_subdir, resolved per job, in sweeps too."""
    record = Path(output_dir) / ".hydra"
    if not (record / "config.yaml").exists():
        return ".hydra"
    return f".hydra/resume-{1 + sum(1 for p in record.glob('resume-*') if p.is_dir())}"


OmegaConf.register_new_resolver("hydra_record", hydra_record, replace=True)

LOCK = "run.lock"
SWEEP_LOCK = "sweep.lock"
REFUSED = "refused.json"  # in a sweep job's Hydra record: this job was refused its directory
# a directory holding any of them holds a run
RUN_FILES = ("summary.json", "last.pt", "metrics.jsonl")


def _alive(owner: dict) -> bool | None:
    """Whether the process that wrote a lock still runs: None when it ran on another host."""
    if owner.get("host") != socket.gethostname():
        return None
    try:
        return _process_start_time(owner["pid"]) == owner["started"]
    except (OSError, KeyError, ValueError, IndexError):
        return False


def claim_run_dir(directory: Path, resume: object, key: str = "hydra.run.dir") -> tuple[Path, dict]:
    """Make `directory` this run's, before anything is written there: refuse a fresh run into
    a directory that already holds one, and a second live run into a directory that one is
    using (run.lock). `key` names the directory in messages. Returns the lock, for `release`;
    it is released at the latest when this process exits."""
    if requested_resume(resume) in (False, None) and any(
        (directory / name).exists() for name in RUN_FILES
    ):
        try:
            status = json.loads((directory / "summary.json").read_text())["status"]
        except (OSError, ValueError, KeyError, TypeError):
            status = "unfinished"
        where = f"{key}={directory}" if key == "hydra.run.dir" else f"{directory}"
        raise ConfigError(
            f"{where} already holds a run ({status}); continue it with resume=true, or start a new one in another {key}"
        )
    return take_lock(directory / LOCK, key, "run")


def take_lock(lock: Path, key: str, what: str) -> tuple[Path, dict]:
    """Create `lock` holding this process's pid, start time, host (and SLURM job): refused in
    one ConfigError while a live process, another host's or this SLURM job's before a requeue
    holds it; a lock whose process is gone is taken over."""
    me = {
        "pid": os.getpid(),
        "started": _process_start_time(os.getpid()),
        "host": socket.gethostname(),
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
    }
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            owner = json.loads(lock.read_text())
        except (OSError, ValueError):
            owner = {}
        owner = owner if isinstance(owner, dict) else {}
        # this job, before SLURM requeued it
        requeued = me["slurm_job"] is not None and owner.get("slurm_job") == me["slurm_job"]
        if _alive(owner) is not False and not requeued:
            raise ConfigError(
                f"{lock.parent} is in use by another {what} (pid {owner.get('pid')} on {owner.get('host')}); "
                f"choose another {key}, or delete {lock} if that {what} is gone"
            ) from None
        log.warning(
            "%s was left by pid %s, which has ended: taking it over", lock, owner.get("pid")
        )
        lock.unlink(missing_ok=True)
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    with os.fdopen(fd, "w") as f:
        json.dump(me, f)
    atexit.register(release, (lock, me))
    return lock, me


def latest_record(run_dir: Path) -> Path:
    """The newest Hydra record of a run directory: .hydra/resume-<n> of the latest segment, else .hydra."""
    segments = [
        p for p in (run_dir / ".hydra").glob("resume-*") if p.is_dir() and p.name[7:].isdigit()
    ]
    return max(segments, key=lambda p: int(p.name[7:])) if segments else run_dir / ".hydra"


def record_refusal(run_dir: Path, error: ConfigError) -> None:
    """Note in a sweep job's own Hydra record (written for this job a moment ago) that the job
    was refused its directory, for the sweep's closing list and exit code; nothing else in the
    directory, another run's, is touched."""
    record = latest_record(run_dir)
    record.mkdir(parents=True, exist_ok=True)  # absent only with hydra.output_subdir=null
    write_json(record / REFUSED, {"error": str(error)})


def _check_resume(config: DictConfig, path: Path) -> int | None:
    """Refuse, before Hydra writes this segment's record, a resume that would change what the
    run computes (checkpoint.resume_changes; Trainer records the allowed changes). Returns the
    checkpoint's step when its run has nothing left to do (trainer.max_iters reached, no
    evaluation due), else None."""
    state = load_checkpoint(path)
    now = {
        k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
        for k, v in config.items()
        if k != "hydra"
    }
    resume_changes(path, state["config"], now, list(config.allow_changes))
    return (
        state["step"]
        if state["step"] >= config.trainer.max_iters and not state["eval_due"]
        else None
    )


def release(claim: tuple[Path, dict]) -> None:
    """Remove a lock `take_lock` made, unless another process has taken it over since."""
    lock, me = claim
    try:
        if json.loads(lock.read_text()) == me:
            lock.unlink()
    except (OSError, ValueError):
        pass


def _check_writable(config: DictConfig, key: str) -> None:
    """Exit with one clear line if the output directory `key` cannot be resolved or written."""
    try:
        directory = OmegaConf.select(config, key, throw_on_missing=True)
    except Exception as e:  # an interpolation that fails: a bad environment variable, say
        print(f"{key} cannot be resolved: {str(e).splitlines()[0]}", file=sys.stderr)
        sys.exit(EXIT_CONFIG_ERROR)
    reason = unwritable(directory)
    if reason:
        print(
            f"{key}={directory} is not a writable directory ({reason}); choose another {key}",
            file=sys.stderr,
        )
        sys.exit(EXIT_CONFIG_ERROR)


class RunCallbacks(Callback):
    """Hydra callbacks. Before anything runs, the config must hold (`check_config`: a bad value
    is one line and exit 2, with nothing written), the output directory must be writable
    (Hydra would otherwise fail later with a stack trace) and this run's (`claim_run_dir`). After a multirun, each job's status is listed and
    the exit code is 1 if any job did not finish: one failed job never stops the others, but it
    never goes unnoticed either."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_config(config)  # a bad value is one line, before Hydra writes anything
            _check_writable(config, "hydra.run.dir")
            if int(os.environ.get("RANK", 0)) == 0:  # under torchrun, rank 0 speaks for the run
                run_dir = Path(config.hydra.run.dir)
                claim_run_dir(run_dir, config.resume)
                resumed = resume_checkpoint_path(config.resume, run_dir)
                if (
                    resumed is not None
                    and resumed.parent.resolve() != run_dir.resolve()
                    and resumed.parent.is_dir()
                ):
                    claim_run_dir(resumed.parent, True)  # the run continues there
                step = (
                    _check_resume(config, resumed)
                    if resumed is not None and resumed.exists()
                    else None
                )
                if step is not None:  # a relaunched run that has finished: touch nothing
                    print(
                        f"{resumed.parent} already finished at step {step} (trainer.max_iters={config.trainer.max_iters}); nothing to do"
                    )
                    sys.exit(0)

        except ConfigError as e:
            print(e, file=sys.stderr)
            sys.exit(EXIT_CONFIG_ERROR)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """The sweep directory must be writable and this sweep's alone (sweep.lock): two sweeps
        launched into one directory would run the same jobs in the same folders. Each job then
        claims its own directory (nanolab.train)."""
        _check_writable(config, "hydra.sweep.dir")
        try:
            take_lock(Path(config.hydra.sweep.dir) / SWEEP_LOCK, "hydra.sweep.dir", "sweep")
        except ConfigError as e:
            print(e, file=sys.stderr)
            sys.exit(EXIT_CONFIG_ERROR)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = sorted(
            (d for d in sweep_dir.iterdir() if (d / ".hydra").is_dir()),
            key=lambda d: int(d.name.split("_")[0]),
        )
        failed = []
        log.info("sweep %s:", sweep_dir)
        for job in jobs:
            try:
                summary = json.loads((job / "summary.json").read_text())
            except (OSError, ValueError):
                summary = {"status": "unknown (no summary.json)"}
            # its directory held another run: that run's summary is not this job's
            if (latest_record(job) / REFUSED).is_file():
                summary = {
                    "status": "refused",
                    "error": json.loads((latest_record(job) / REFUSED).read_text())["error"],
                }
            best = summary.get("best/val/ce")
            line = f"  {job.name}: {summary['status']}" + (
                f", best val/ce {best:.4f}" if best is not None else ""
            )
            if summary["status"] not in ENDED_AS_PLANNED:
                failed.append(job.name)
                line += f" ({summary.get('error', '')})"
            log.info("%s", line)
        if failed:
            log.error("%d of %d jobs did not finish: %s", len(failed), len(jobs), ", ".join(failed))
            sys.exit(1)
