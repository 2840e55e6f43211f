"""Studies as scripts: training runs two at a time into named folders (a finished one is kept, so
a study resumes), and grid searches that extend the grid past an end while the best value lies
there, so that every reported optimum is interior to what was run (or flagged).

    from nanolab.study import Study
    study = Study(Path("multirun/my_study"))
    found = study.search("tune", lambda lr: {"optim.lr": lr}, [1e-3, 3e-3, 1e-2], factor=3)
    found.best, found.settings, found.scores   # 3e-3, {"optim.lr": 0.003}, {0.001: 5.9, ...}

scripts/optimizer_study.py and scripts/finetune_study.py are built on it.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("nanolab.study")

Settings = dict[str, object]


def run_name(settings: Settings) -> str:
    """A run folder's name from its settings: equal settings, one folder. Keys lose their group
    prefix (`optim.lr=0.001` -> lr0.001), a config group's choice is its name (`optim=sgd` ->
    sgd), numbers print with 3 significant digits."""
    parts = []
    for key, value in settings.items():
        text = f"{value:.3g}" if isinstance(value, float) else str(value)
        name = "" if "." not in key and isinstance(value, str) else key.rsplit(".", 1)[-1]
        parts.append(f"{name}{text}".replace("/", "%"))
    return "_".join(parts)


def overrides(settings: Settings) -> list[str]:
    """Hydra overrides for settings (floats to 6 significant digits)."""
    return [f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in settings.items()]


def final_score(run: Path, metric: str = "final/val/ce_calibrated") -> float:
    """A finished run's final value of `metric` from its summary.json."""
    return json.loads((run / "summary.json").read_text())[metric]


def evaluated(run: Path, metric: str = "ce_calibrated") -> float:
    """A finished run's `metric` on the whole val split (`python -m nanolab.evaluate` on its
    last.pt, unless its evaluation_val.json exists); exits naming the run when it cannot."""
    scored = run / "evaluation_val.json"
    if not scored.is_file():
        if not (run / "last.pt").is_file():
            raise SystemExit(
                f"{run} has no last.pt to evaluate: train it with trainer.save_checkpoints=true"
            )
        cmd = [sys.executable, "-m", "nanolab.evaluate", f"checkpoint='{run / 'last.pt'}'"]
        if subprocess.run(cmd, stdout=subprocess.DEVNULL, check=False).returncode:
            raise SystemExit(f"evaluating {run} failed: {' '.join(cmd)} says why")
    return json.loads(scored.read_text())[metric]


def compare(runs: list[Path], out: Path, *flags: str) -> None:
    """`python -m nanolab.compare` on the runs, its report into `out`."""
    cmd = [sys.executable, "-m", "nanolab.compare", *flags, *map(str, runs), "--out", str(out)]
    subprocess.run(cmd, check=True)


@dataclass
class Search:
    """A finished grid search: each value's score, the best value and its settings."""

    scores: dict[float, float]
    best: float
    settings: Settings

    def cells(self, spec: str = ".3g", bold: bool = True) -> str:
        """The search as one table cell: "value: score" for each value, the best in bold."""
        return ", ".join(
            ("**{}**" if bold and v == self.best else "{}").format(f"{v:{spec}}: {s:.3f}")
            for v, s in self.scores.items()
        )


class Study:
    """Runs under one root folder, trained by `python -m nanolab.train` with `common` overrides,
    at most `parallel` at a time with `threads` torch threads each (None: the config's), scored
    by `score` (lower is better). The limit holds across threads: several searches may run on
    one Study at once (each in its own thread) and still share its `parallel` slots."""

    def __init__(
        self,
        root: Path,
        common: list[str] | None = None,
        parallel: int = 2,
        threads: int | None = 1,
        score: Callable[[Path], float] = final_score,
    ) -> None:
        self.root = root.resolve()
        self.common = (
            ["logger=none"] + ([f"threads={threads}"] if threads else []) + list(common or [])
        )
        self.score = score
        self._slots = threading.BoundedSemaphore(parallel)

    def train(self, run: Path, settings: Settings) -> None:
        """Train one run into `run` unless it finished there before; exit naming its log if it
        fails."""
        if (run / "summary.json").is_file():
            return
        cmd = [sys.executable, "-m", "nanolab.train", *self.common, f"hydra.run.dir={run}"]
        with self._slots:
            subprocess.run(
                cmd + overrides(settings),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
        if not (run / "summary.json").is_file():
            raise SystemExit(f"the run {run} failed: {run / 'train.log'} says why")

    def train_all(self, jobs: list[tuple[Path, Settings]]) -> None:
        """Train every (folder, settings), `parallel` at a time; a folder named twice, once."""
        unique = list({run: (run, settings) for run, settings in jobs}.values())
        with ThreadPoolExecutor(max(1, len(unique))) as pool:
            list(pool.map(lambda job: self.train(*job), unique))

    def grid(self, sweep: str, candidates: list[Settings]) -> list[Path]:
        """Train each candidate under root/sweep (folder named by run_name); their folders."""
        runs = [self.root / sweep / run_name(s) for s in candidates]
        self.train_all(list(zip(runs, candidates)))
        return runs

    def search(
        self,
        sweep: str,
        make: Callable[[float], Settings],
        values: list[float],
        factor: float,
        extensions: int = 3,
    ) -> Search:
        """Train make(v) for each value and return the search: every value's score and the best.
        While the best is the largest or smallest value run, add one `factor` beyond it and train
        that (at most `extensions` times; 0 is a bound, never extended below). An optimum still
        at an end after that is logged as a warning."""
        values = sorted(values)
        while True:
            candidates = {v: make(v) for v in values}
            runs = dict(zip(values, self.grid(sweep, list(candidates.values()))))
            scores = {v: self.score(runs[v]) for v in values}
            best = min(values, key=scores.__getitem__)
            found = Search(scores, best, candidates[best])
            if best == values[-1]:
                beyond = best * factor
            elif best == values[0] and best != 0:
                beyond = best / factor
            else:
                return found
            if not extensions:
                log.warning("%s: the best value %.3g is at an end of %s", sweep, best, values)
                return found
            values = sorted([*values, beyond])
            extensions -= 1
