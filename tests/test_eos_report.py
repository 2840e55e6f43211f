"""scripts/edge_of_stability_report.py, the tables of docs/edge_of_stability.md, on trajectories
with known answers: window medians against the threshold, the first step near it, the catapult's
loss rise and sharpness drop."""

import csv
import importlib.util
import sys

from conftest import REPO

spec = importlib.util.spec_from_file_location(
    "eos_report", REPO / "scripts" / "edge_of_stability_report.py"
)
eos_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(eos_report)


def row(sweep, loss, lr, seed, step, train_loss="", sharpness="", precond="", status="finished"):
    return {
        "sweep": sweep,
        "loss": loss,
        "optimizer": "sgd",
        "lr": str(lr),
        "seed": str(seed),
        "status": status,
        "step": str(step),
        "train_loss": str(train_loss),
        "sharpness": str(sharpness),
        "precond_sharpness": str(precond),
        "threshold": "",
    }


def test_gd_table_reads_each_window_against_two_over_lr():
    rows = []
    # lr 0.1: 2/lr = 20; seed 1 reaches 18 (0.9 x 20) at step 750, seed 2 at step 1000
    for seed, path in ((1, [10, 12, 16, 18, 24, 22, 20]), (2, [10, 10, 12, 16, 20, 26, 24])):
        for i, s in enumerate(path):
            rows.append(row("gd_ce", "ce", 0.1, seed, i * 250, 3 - 0.1 * i + 0.3 * (i == 5), s))
    runs = eos_report.by_run(rows)
    windows = [(0, 250), (250, 500), (1000, 1500)]
    text = eos_report.edge_table(runs, ("gd_ce",), "sharpness", 2.0, windows)
    cells = [c.strip() for c in text.splitlines()[2].strip("|").split("|")]
    assert cells[:7] == ["ce", "sgd", "0.1", "20", "2", "10.00 ± 0.00", "750, 1000"]
    assert cells[7] == "0.55 ± 0.07"  # steps 0 < t <= 250: 12/20 and 10/20
    assert cells[8] == "0.70 ± 0.14"  # step 500: 16/20 and 12/20
    assert cells[9] == "1.15 ± 0.14"  # steps 1250, 1500: medians of (1.1, 1.0) and (1.3, 1.2)
    assert cells[10] == "1.25 ± 0.07"  # the largest S / threshold of each seed: 1.2 and 1.3
    assert cells[11] == "3 ± 0 → 2.4 ± 0"  # the train loss at the first and last log
    # after the first step at 0.9 x threshold the loss rose once (step 1250) in each seed
    assert cells[12] == "1, 1 of 6"


def test_first_reach_is_the_first_step_at_ninety_percent():
    points = [(0, 0.5), (25, 0.89), (50, 0.9), (75, 1.2)]
    assert eos_report.first_reach(points, 0.9) == "50"
    assert eos_report.first_reach(points[:2], 0.9) == "never"


def test_catapult_table_finds_the_spike_and_the_drop_below_the_edge():
    lr = 0.25  # 2/lr = 8
    losses = {1: 4.0, 2: 3.0, 3: 6.0, 4: 2.0, 5: 1.5}
    sharp = {0: 10.0, 2: 12.0, 4: 2.0, 60: 8.0, 80: 9.0}
    rows = [
        row("catapult_ce", "ce", lr, 1, t, losses.get(t, ""), sharp.get(t, ""))
        for t in sorted(set(losses) | set(sharp))
    ]
    text = eos_report.catapult_table(eos_report.by_run(rows))
    cells = [c.strip() for c in text.splitlines()[2].strip("|").split("|")]
    assert cells[3:5] == ["10.00", "1.25"]  # λ0 and lr·λ0/2
    assert cells[5:7] == ["2.00", "3"]  # the loss doubled from its best (3.0) at step 3
    assert cells[7] == "0.25"  # min over steps 2-50 of S / (2/lr): 2 / 8
    assert cells[8] == "1.06"  # median of 8/8 and 9/8 over steps 50-100
    assert cells[9] == "0 of 1"


def test_tables_regenerate_from_the_committed_csv(tmp_path, monkeypatch, capsys):
    rows = [row("gd_mse", "mse", 0.5, 1, t, 0.02, 2 + t / 100) for t in (0, 250, 500)]
    with open(tmp_path / "trajectories.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, eos_report.COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    monkeypatch.setattr(sys, "argv", ["edge_of_stability_report.py", str(tmp_path)])
    eos_report.main()
    assert "| mse | sgd | 0.5 | 4 | 1 | 2.00 | 250 |" in capsys.readouterr().out
