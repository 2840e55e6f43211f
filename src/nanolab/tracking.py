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

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nanolab import ConfigError, Diverged, Interrupted
from nanolab.atomic import atomic_path, write_json
from nanolab.config import computing_keys
from nanolab.launch import RunInfo

log = logging.getLogger(__name__)


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
                "could not read the earlier W&B segments "
                "(%s); assuming they hold the %d records kept",
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
    """The W&B run config: the run's config resolved, less the keys that change nothing it
    computes (config.changes_nothing), plus what setup decided (device, dtype, ...)."""
    return computing_keys(OmegaConf.to_container(cfg, resolve=True)) | resolved


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
