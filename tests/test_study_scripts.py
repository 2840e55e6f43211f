"""The tables of scripts/square_loss_bpe_study.py and scripts/double_descent_study.py, from runs
laid out as nanolab writes them (summary.json, evaluation_val.json)."""

import importlib.util
import json

from conftest import REPO


def load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def finished(run, acc, ce, train_acc=0.5, params=1000):
    run.mkdir(parents=True)
    summary = {"final/train_eval/acc": train_acc, "params": params}
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "evaluation_val.json").write_text(json.dumps({"acc": acc, "ce_calibrated": ce}))
    return run


def test_square_loss_seeds_count_a_seed_at_the_commonest_token_as_collapsed(tmp_path, monkeypatch):
    script = load("square_loss_bpe_study")
    monkeypatch.setattr(script, "commonest_token_accuracy", lambda: 0.124)
    runs = {
        "ce": [finished(tmp_path / f"ce{i}", 0.21, 5.4 + i / 100) for i in range(3)],
        "square": [
            finished(tmp_path / f"sq{i}", acc, 6.5) for i, acc in enumerate([0.18, 0.125, 0.17])
        ],
    }
    table = script.seeds_table(runs)
    assert "| ce | 5.400 / 0.210, 5.410 / 0.210, 5.420 / 0.210 | 5.410 ± 0.010 |" in table
    assert "0 of 3 |" in table.splitlines()[2]
    assert "1 of 3 |" in table.splitlines()[3]
    assert "val accuracy 0.1240" in table


def test_double_descent_tables_name_the_best_arm_and_each_interpolation_point(
    tmp_path, monkeypatch
):
    script = load("double_descent_study")
    monkeypatch.setattr(script, "WIDTHS", [8, 16, 32])
    monkeypatch.setattr(script, "SEEDS", [1, 2])
    # train accuracy within 0.01 of its best from width 16 on without decay, only at 32 with it
    fits = {"none": [0.3, 0.945, 0.95], "wd 1": [0.3, 0.5, 0.8]}
    vals = {"none": [0.25, 0.18, 0.2], "wd 1": [0.24, 0.26, 0.27]}
    arms = {
        a: {
            w: [
                finished(
                    script.run_dir(tmp_path, a, w, s),
                    vals[a][i] + (2 * s - 1) / 1000,
                    3.0,
                    fits[a][i],
                    params=w * 700,
                )
                for s in (1, 2)
            ]
            for i, w in enumerate([8, 16, 32])
        }
        for a in fits
    }
    text = script.tables(arms, {"unigram": {"ce": 3.4, "acc": 0.149}})
    assert "| 8 (5.6k) | 0.252 ± 0.001 (0.30) | 0.242 ± 0.001 (0.30) | none |" in text
    assert "| 16 (11.2k) | 0.182 ± 0.001 (0.94) | 0.262 ± 0.001 (0.50) | wd 1 |" in text
    assert "none: width 16, wd 1: width 32" in text
    assert "unigram count table of the same noisy training set: val accuracy 0.149" in text
    assert script.run_dir(tmp_path, "wd 0.1", 8, 1) == tmp_path / "wd0_1" / "n_embd8_seed1"
