"""nanolab.study: run folders named by their settings, a finished run kept, a failed one named,
and grid searches that extend past an end until the optimum is interior."""

import json
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nanolab import study
from nanolab.study import Study, overrides, run_name


def fake_study(tmp_path, loss, trained=None):
    """A Study whose runs write summary.json with loss(settings) instead of training."""
    s = Study(tmp_path / "root")

    def train(run, settings):
        if (run / "summary.json").is_file():
            return
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps({"final/val/ce_calibrated": loss(settings)}))
        if trained is not None:
            trained.append(settings)

    s.train = train
    return s


def test_run_names_and_overrides():
    settings = {"optim": "muon", "optim.lr": 0.02, "optim.adamw_weight_decay": 0.0, "seed": 7}
    assert run_name(settings) == "muon_lr0.02_adamw_weight_decay0_seed7"
    assert run_name({"optim.lr": 1 / 3 * 1e-3}) == "lr0.000333"
    assert overrides(settings) == [
        "optim=muon",
        "optim.lr=0.02",
        "optim.adamw_weight_decay=0",
        "seed=7",
    ]


def test_search_extends_past_each_end_until_the_best_is_interior(tmp_path):
    trained = []
    # optimum at lr 1e-4, below the grid: 2.5e-4, then 6.25e-5 (the closest), then 1.5625e-5
    # to show that 6.25e-5 is interior
    s = fake_study(tmp_path, lambda st: abs(math.log(st["optim.lr"] / 1e-4)), trained)
    found = s.search("lr", lambda v: {"optim.lr": v}, [1e-3, 2e-3, 4e-3], factor=4)
    lrs = [1e-3, 2e-3, 4e-3, 2.5e-4, 6.25e-5, 1.5625e-5]
    assert sorted(t["optim.lr"] for t in trained) == pytest.approx(sorted(lrs))
    assert found.best == pytest.approx(6.25e-5) and found.settings == {"optim.lr": found.best}
    assert list(found.scores) == sorted(lrs)
    assert found.cells(bold=True).startswith("1.56e-05: 1.856, **6.25e-05: 0.470**, 0.00025:")
    assert (s.root / "lr" / "lr6.25e-05" / "summary.json").is_file()

    # the largest end, on a fresh sweep
    assert (
        s.search("up", lambda v: {"optim.lr": v}, [1e-5, 2e-5], factor=2).best == 8e-5
    )  # 1e-4 itself is never run: 8e-5 beats 1.6e-4


def test_search_keeps_zero_as_a_bound_and_warns_when_out_of_extensions(tmp_path, caplog):
    trained = []
    s = fake_study(tmp_path, lambda st: st["optim.weight_decay"], trained)
    found = s.search("wd", lambda v: {"optim.weight_decay": v}, [0.0, 0.1], factor=4)
    assert found.best == 0.0 and len(trained) == 2  # no run below 0

    s = fake_study(tmp_path, lambda st: -st["optim.lr"])
    with caplog.at_level(logging.WARNING, logger="nanolab.study"):
        found = s.search("edge", lambda v: {"optim.lr": v}, [1.0, 2.0], 2, extensions=2)
    assert found.best == 8.0
    assert "the best value 8 is at an end of [1.0, 2.0, 4.0, 8.0]" in caplog.text


def test_a_finished_run_is_kept_and_a_failed_one_is_named(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(study.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    s = Study(tmp_path, common=["seed=3"])
    done = tmp_path / "done"
    done.mkdir()
    (done / "summary.json").write_text("{}")
    s.train_all([(done, {"optim.lr": 0.1}), (done, {"optim.lr": 0.1})])
    assert calls == []
    with pytest.raises(SystemExit, match=r"the run .*failed: .*failed/train.log says why"):
        s.train(tmp_path / "failed", {"optim.lr": 0.1})
    assert calls[0][1:] == [
        "-m",
        "nanolab.train",
        "logger=none",
        "threads=1",
        "seed=3",
        f"hydra.run.dir={tmp_path / 'failed'}",
        "optim.lr=0.1",
    ]


def test_searches_in_threads_share_the_parallel_slots(tmp_path, monkeypatch):
    running, peak, lock = [0], [0], threading.Lock()

    def fake_run(cmd, **kw):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        run = Path(next(c for c in cmd if c.startswith("hydra.run.dir=")).split("=", 1)[1])
        lr = float(next(c for c in cmd if c.startswith("optim.lr=")).split("=", 1)[1])
        time.sleep(0.02)
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps({"final/val/ce_calibrated": abs(lr - 3)}))
        with lock:
            running[0] -= 1

    monkeypatch.setattr(study.subprocess, "run", fake_run)
    s = Study(tmp_path, parallel=2)
    with ThreadPoolExecutor(4) as pool:
        found = list(
            pool.map(
                lambda name: s.search(name, lambda v: {"optim.lr": v}, [1.0, 2.0, 4.0], 2),
                ["a", "b", "c", "d"],
            )
        )
    assert [f.best for f in found] == [2.0, 2.0, 2.0, 2.0] and peak[0] == 2


def test_evaluated_reads_a_kept_evaluation_and_names_a_run_it_cannot_evaluate(
    tmp_path, monkeypatch
):
    class Failed:
        returncode = 2

    monkeypatch.setattr(study.subprocess, "run", lambda cmd, **kw: Failed())
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(SystemExit, match=r"run has no last.pt .*trainer.save_checkpoints=true"):
        study.evaluated(run)
    (run / "last.pt").write_bytes(b"")
    with pytest.raises(SystemExit, match=r"evaluating .*run failed: .* nanolab.evaluate"):
        study.evaluated(run)
    (run / "evaluation_val.json").write_text(json.dumps({"ce_calibrated": 5.4, "acc": 0.2}))
    assert study.evaluated(run) == 5.4 and study.evaluated(run, "acc") == 0.2
