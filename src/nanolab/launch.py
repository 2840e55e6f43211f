"""Launching a run under Hydra: naming, run directories, locks, callbacks and signals.

- names: a run's W&B group and name and its sweep subdirectory come from its overrides, less
  the keys that change nothing it computes (config.changes_nothing);
- resolvers for the configs: launch_time and launch_id (one value for all torchrun processes),
  safe_dirname, job_dirname, hydra_record, div;
- locks: a run directory (run.lock) and a sweep directory (sweep.lock) belong to one live
  process; a fresh run never writes into a directory that holds another run;
- RunCallbacks: before Hydra writes anything, the config, the output directory and the resume
  are checked (one line and exit 2 on a bad value); after a multirun, each job's status;
- signals: SIGTERM, SIGINT and submitit's requeue signal become a stop request the training
  loop honours after its current step, with a checkpoint.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from nanolab import ENDED_AS_PLANNED, EXIT_CONFIG_ERROR, ConfigError
from nanolab.atomic import unwritable, write_json
from nanolab.config import changes_nothing, check_config
from nanolab.resume import prepare_resume, requested_resume, resume_checkpoint_path

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
    name = run_name(list(hc.overrides.task))
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


def run_name(overrides: list[str]) -> str:
    """A run's name from its command-line overrides: Hydra's override_dirname (sorted, joined
    by ','), less the keys that change nothing the run computes (config.changes_nothing)."""
    return ",".join(sorted(o for o in overrides if not changes_nothing(o.split("=", 1)[0])))


def job_dirname(overrides: list[str]) -> str:
    """A sweep job's directory name (after its number): the `job_dirname` resolver of
    hydra.sweep.subdir."""
    return safe_dirname(run_name(overrides))


def safe_dirname(overrides: str, max_len: int = 120) -> str:
    """A directory name from an override string: no '/', and at most max_len characters (a
    long one keeps its start and a hash of the whole), so any override list makes a valid
    file name."""
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
                f"NANOLAB_LAUNCH_TIME={os.environ['NANOLAB_LAUNCH_TIME']!r} "
                "must be Unix seconds: export NANOLAB_LAUNCH_TIME=$(date +%s)"
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


OmegaConf.register_new_resolver("job_dirname", job_dirname, replace=True)


# as Hydra's now
OmegaConf.register_new_resolver("launch_time", launch_time, use_cache=True, replace=True)


OmegaConf.register_new_resolver("launch_id", launch_id, use_cache=True, replace=True)


# Integer division for configs that derive one size from another (experiment=model_size keeps
# the head size: n_head = ${div:${model.n_embd},32}).
OmegaConf.register_new_resolver("div", lambda a, b: int(a) // int(b), replace=True)
# The larger of two integers, for a floor under a derived size (experiment=batch_size: a token
# cap, but at least 512 steps: max_iters = ${max:512,${div:32768,${trainer.batch_size}}}).
OmegaConf.register_new_resolver("max", lambda a, b: max(int(a), int(b)), replace=True)


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
            f"{where} already holds a run ({status}); continue it "
            f"with resume=true, or start a new one in another {key}"
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
                f"{lock.parent} is in use by another {what} (pid "
                f"{owner.get('pid')} on {owner.get('host')}); choose "
                f"another {key}, or delete {lock} if that {what} is gone"
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
    """The newest Hydra record of a run directory: .hydra/resume-<n> of the latest segment, else
    .hydra."""
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
    is one line and exit 2, with nothing written), the output directory must be writable (Hydra
    would otherwise fail later with a stack trace) and this run's (`claim_run_dir`), and a resume
    must be allowed (`prepare_resume`). After a multirun, each job's status is listed and the
    exit code is 1 if any job did not finish: one failed job never stops the others, but it never
    goes unnoticed either."""

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
                # Refused here, a resume that would change what the run computes leaves the
                # run directory as it was: Hydra has not written this segment's record yet.
                resume = prepare_resume(config, run_dir, keep=True)
                if resume and resume.finished(config.trainer.max_iters):
                    # a relaunched run that has finished: touch nothing
                    print(
                        f"{resume.path.parent} already finished at step {resume.state['step']} "
                        f"(trainer.max_iters={config.trainer.max_iters}); nothing to do"
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


def requeue_signal() -> int:
    """The signal submitit sends a SLURM job before its time limit (SUBMITIT_PREEMPT_SIGNAL,
    USR2 by default); its handler, installed by submitit, requeues the job."""
    return getattr(
        signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2
    )


def _say_from_handler(message: str) -> None:
    """A warning line on stderr, written from a signal handler. The handler may interrupt the
    loop in the middle of a write to sys.stderr (a log line, the progress bar), where logging
    through the same buffered stream fails with 'reentrant call' and prints a traceback;
    os.write on the descriptor does not. The line goes to the console, not to train.log."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    os.write(2, f"[{stamp}][{log.name}][WARNING] - {message}\n".encode())


@contextlib.contextmanager
def stop_requests() -> Iterator[list[int]]:
    """Turn SIGTERM and SIGINT (preemption, Ctrl-C) and submitit's requeue signal into a
    request that the loop honours after the current step, with a checkpoint (nanolab.train then
    hands the requeue signal to submitit's handler). A second signal (a scheduler and torchrun
    may each send one) is noted and changes nothing, so the stop checkpoint is always written;
    a third aborts at once, without it. Yields the list of signals received."""
    received: list[int] = []

    def request_stop(signum: int, frame: object) -> None:
        received.append(signum)
        if len(received) == 1:
            _say_from_handler(f"signal {signum}: stopping after this step, with a checkpoint")
        elif len(received) == 2:
            _say_from_handler(
                f"signal {signum}: already stopping; the checkpoint is written first (a third "
                "signal aborts without it)"
            )
        else:
            raise KeyboardInterrupt(
                f"signal {signum}, the third: aborted without a checkpoint of this step"
            )

    try:
        previous = {
            sig: signal.signal(sig, request_stop)
            for sig in (signal.SIGTERM, signal.SIGINT, requeue_signal())
        }
    except ValueError:  # not the main thread: leave signals to whoever owns them
        previous = {}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
