"""nanolab.compare: seeds aggregated into the right means and standard deviations, every run
accounted for, plots written."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import yaml
from conftest import compose_train
from omegaconf import OmegaConf

from nanolab import ConfigError
from nanolab.compare import compare

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_run(
    job: Path,
    overrides: list[str],
    seed: int,
    final: dict | None,
    status: str = "finished",
    error: str = "",
) -> None:
    """A run directory as nanolab.train leaves it: .hydra/, metrics.jsonl and summary.json."""
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*overrides, f"seed={seed}"]))
    (job / ".hydra" / "config.yaml").write_text(
        yaml.safe_dump({"seed": seed, "optim": {"lr": 0.002}})
    )
    (job / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump({"hydra": {"runtime": {"choices": {"loss": "ce"}}}})
    )
    records = [{"step": 0, "tokens": 0, "time_s": 1.0, "val/ce": 4.0, "val/acc": 0.0}]
    records += [
        {"step": 10, "tokens": 640, "time_s": 5.0, "train/loss": 2.5, "perf/tokens_per_s": 100.0}
    ]
    if final:
        records.append({"step": 20, "tokens": 1280, "time_s": 9.0, **final})
    (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (job / "summary.json").write_text(
        json.dumps({"status": status, "wall_time_s": 10.0} | ({"error": error} if error else {}))
    )


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with open(path) as f:
        return {row["loss"]: row for row in csv.DictReader(f)}


def test_means_and_stds_over_seeds_by_hand(tmp_path):
    sweep = tmp_path / "sweep"
    fake_run(sweep / "0_loss=ce,seed=1", ["loss=ce"], 1, {"val/ce": 2.0, "val/acc": 0.50})
    fake_run(sweep / "1_loss=ce,seed=2", ["loss=ce"], 2, {"val/ce": 2.2, "val/acc": 0.40})
    fake_run(sweep / "2_loss=mse,seed=1", ["loss=mse"], 1, {"val/ce": 3.0, "val/acc": 0.30})
    fake_run(sweep / "3_loss=mse,seed=2", ["loss=mse"], 2, {"val/ce": 3.3, "val/acc": 0.35})
    fake_run(sweep / "4_loss=mse,seed=3", ["loss=mse"], 3, {"val/ce": 3.9, "val/acc": 0.25})
    fake_run(
        sweep / "5_loss=mse,seed=4",
        ["loss=mse"],
        4,
        None,
        status="diverged",
        error="Diverged: non-finite loss",
    )

    compare([str(sweep)], sort="val/ce")

    rows = read_csv(sweep / "report.csv")
    assert list(rows) == ["ce", "mse"]  # sorted by val/ce, lowest first
    # ce: (2.0 + 2.2) / 2 = 2.1; sample std sqrt((0.1² + 0.1²) / 1) = 0.141421...
    assert float(rows["ce"]["val/ce_mean"]) == pytest.approx(2.1)
    assert float(rows["ce"]["val/ce_std"]) == pytest.approx(math.sqrt(0.02))
    assert float(rows["ce"]["val/acc_std"]) == pytest.approx(math.sqrt(0.005))
    # mse: the diverged seed is left out: (3.0 + 3.3 + 3.9) / 3 = 3.4; std sqrt((0.16 + 0.01 + 0.25)
    # / 2)
    assert rows["mse"]["n"] == "3" and rows["mse"]["seeds"] == "1 2 3"
    assert float(rows["mse"]["val/ce_mean"]) == pytest.approx(3.4)
    assert float(rows["mse"]["val/ce_std"]) == pytest.approx(math.sqrt(0.21))
    assert float(rows["mse"]["best/val/ce_mean"]) == pytest.approx(3.4)  # below the step-0 4.0
    assert float(rows["mse"]["wall_time_s_mean"]) == 10.0

    report = (sweep / "report.md").read_text()
    assert "| ce | 2 | 1,2 | 2.1000 ± 0.1414 |" in report
    assert "5_loss=mse,seed=4" in report and "diverged: Diverged: non-finite loss" in report
    with open(sweep / "runs.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["finished"] * 5 + ["diverged"]
    assert (sweep / "curves.png").read_bytes().startswith(PNG_MAGIC)


def test_swept_number_gets_a_metric_against_value_plot(tmp_path):
    sweep = tmp_path / "sweep"
    for i, (lr, loss, ce) in enumerate(
        [(1e-3, "ce", 2.0), (1e-2, "ce", 1.9), (1e-3, "mse", 3.0), (1e-2, "mse", 2.8)]
    ):
        fake_run(
            sweep / f"{i}_x",
            [f"loss={loss}", f"optim.lr={lr}", "trainer.max_iters=20"],
            1,
            {"val/ce": ce},
        )
    compare([str(sweep)], sort="val/ce")
    with open(sweep / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["loss"], r["optim.lr"]) for r in rows] == [
        ("ce", "0.01"),
        ("ce", "0.001"),
        ("mse", "0.01"),
        ("mse", "0.001"),
    ]
    assert "trainer.max_iters" not in rows[0]  # the same in every run: not a column
    assert (sweep / "val_ce_vs_optim.lr.png").read_bytes().startswith(PNG_MAGIC)
    assert not (sweep / "val_ce_vs_loss.png").exists()


def test_runs_from_several_commands_fill_unswept_keys_from_their_config(tmp_path):
    fake_run(tmp_path / "a", ["loss=mse"], 1, {"val/ce": 3.0})
    fake_run(tmp_path / "b", [], 1, {"val/ce": 2.0})  # the default loss: hydra.yaml's choice, ce
    compare([str(tmp_path / "a"), str(tmp_path / "b")], out=tmp_path / "report", sort="val/ce")
    assert list(read_csv(tmp_path / "report" / "report.csv")) == ["ce", "mse"]


def test_unusable_arguments_are_named(tmp_path):
    with pytest.raises(ConfigError, match="not a directory"):
        compare([str(tmp_path / "missing")])
    with pytest.raises(ConfigError, match="holds no runs"):
        compare([str(tmp_path)])
    fake_run(tmp_path / "run", [], 1, {"val/ce": 2.0})
    with pytest.raises(ConfigError, match="--sort val/loss is not one of"):
        compare([str(tmp_path / "run")], sort="val/loss")


def test_damaged_metrics_are_named_and_a_finished_runs_summary_wins(tmp_path, caplog):
    job = tmp_path / "sweep" / "0_loss=ce,seed=1"
    fake_run(job, ["loss=ce"], 1, {"val/ce": 2.0, "val/acc": 0.5})
    fake_run(
        tmp_path / "sweep" / "1_loss=mse,seed=1", ["loss=mse"], 1, {"val/ce": 3.0, "val/acc": 0.3}
    )
    lines = (job / "metrics.jsonl").read_text().splitlines()
    lines.insert(2, lines[1])  # step 10 logged twice
    # The final evaluation's line torn by a kill; the summary has the final values.
    (job / "metrics.jsonl").write_text("\n".join([*lines[:-1], lines[-1][:25]]) + "\n")
    summary = json.loads((job / "summary.json").read_text())
    (job / "summary.json").write_text(
        json.dumps(summary | {"final/val/ce": 2.0, "final/val/acc": 0.5})
    )

    compare([str(tmp_path / "sweep")])

    row = read_csv(tmp_path / "sweep" / "report.csv")["ce"]
    # not step 0's 4.0
    assert float(row["val/ce_mean"]) == 2.0 and float(row["val/acc_mean"]) == 0.5
    assert f"{job / 'metrics.jsonl'} line 4 is torn" in caplog.text
    assert f"{job / 'metrics.jsonl'} line 3 logs step 10 again (first at line 2)" in caplog.text
    assert (
        f"{job}: metrics.jsonl's last evaluation (step 0) is not summary.json's final one"
        in caplog.text
    )


def test_a_model_size_sweep_gets_sizes_in_the_table_and_a_plot_against_parameters(tmp_path):
    sweep = tmp_path / "sweep"
    for i, (width, params, seed, ce) in enumerate(
        [(32, 30_000, 1, 2.6), (32, 30_000, 2, 2.4), (64, 100_000, 1, 2.1), (64, 100_000, 2, 2.1)]
    ):
        job = sweep / f"{i}_w{width}_s{seed}"
        fake_run(
            job,
            [f"model.n_embd={width}"],
            seed,
            {"val/ce": ce, "val/acc": 0.4, "train_eval/ce": ce - 0.2, "train_eval/acc": 0.45},
        )
        summary = json.loads((job / "summary.json").read_text())
        (job / "summary.json").write_text(
            json.dumps(summary | {"params": params, "flops_per_token": 6 * params + 1000})
        )
    compare([str(sweep)], sort="val/ce")
    with open(sweep / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model.n_embd"], r["params"], r["flops_per_token"]) for r in rows] == [
        ("64", "100000.0", "601000.0"),
        ("32", "30000.0", "181000.0"),
    ]
    assert float(rows[1]["val/ce_std"]) == pytest.approx(math.sqrt(0.02))
    assert (
        "| model.n_embd | n | seeds | params | FLOPs/token |" in (sweep / "report.md").read_text()
    )
    assert "| 64 | 2 | 1,2 | 100k | 601k |" in (sweep / "report.md").read_text()
    assert (sweep / "metrics_vs_params.png").read_bytes().startswith(PNG_MAGIC)


def test_a_presets_interpolated_value_groups_with_the_same_value_given_on_the_command_line(
    tmp_path,
):
    """Hydra saves config.yaml unresolved: optim.lr: ${tuned_lr.${loss.name}} must read as its
    value."""
    fake_run(tmp_path / "sweep" / "0_a", ["loss=ce", "optim.lr=0.003"], 1, {"val/ce": 2.0})
    fake_run(tmp_path / "final" / "0_b", ["loss=ce"], 2, {"val/ce": 2.2})
    config = tmp_path / "final" / "0_b" / ".hydra" / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "seed": 2,
                "loss": {"name": "ce"},
                "tuned_lr": {"ce": 0.003},
                "optim": {"lr": "${tuned_lr.${loss.name}}"},
            }
        )
    )
    compare(
        [str(tmp_path / "sweep"), str(tmp_path / "final")], out=tmp_path / "report", sort="val/ce"
    )
    with open(tmp_path / "report" / "report.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["n"] == "2" and row["seeds"] == "1 2"  # one configuration: lr 0.003 both ways


def test_evaluated_takes_the_val_metrics_from_each_runs_whole_split_evaluation(tmp_path):
    sweep = tmp_path / "sweep"
    fake_run(
        sweep / "0_loss=ce,seed=1",
        ["loss=ce"],
        1,
        {"val/ce": 2.0, "val/ce_calibrated": 1.9, "val/acc": 0.50},
    )
    fake_run(
        sweep / "1_loss=ce,seed=2",
        ["loss=ce"],
        2,
        {"val/ce": 2.2, "val/ce_calibrated": 2.1, "val/acc": 0.40},
    )

    def evaluation(job: str, step: int, ce: float, tokens: int = 36032) -> None:
        fields = {
            "step": step,
            "ce": ce,
            "ce_calibrated": ce - 0.1,
            "temperature": 1.1,
            "acc": 0.3,
            "ece": 0.02,
            "tokens": tokens,
            "freq/b0/ce": ce,
            "freq/b0/share": 1.0,
        }
        (sweep / job / "evaluation_val.json").write_text(
            json.dumps({"checkpoint": f"{job}/last.pt", **fields})
        )

    evaluation("0_loss=ce,seed=1", 20, 3.0)
    with pytest.raises(
        ConfigError,
        match=r"1 finished run\(s\) have no evaluation_val.json.*1_loss=ce,seed=2/last.pt",
    ):
        compare([str(sweep)], evaluated=True)
    evaluation("1_loss=ce,seed=2", 10, 3.4)  # an evaluation of an earlier checkpoint does not count
    with pytest.raises(ConfigError, match="1_loss=ce,seed=2/last.pt"):
        compare([str(sweep)], evaluated=True)
    evaluation("1_loss=ce,seed=2", 20, 3.4, tokens=100)
    with pytest.raises(ConfigError, match=r"different numbers of tokens \(\[100, 36032\]\)"):
        compare([str(sweep)], evaluated=True)
    evaluation("1_loss=ce,seed=2", 20, 3.4)

    compare([str(sweep)], evaluated=True)
    # bins from the whole-split evaluation only: their table and figure, no curves in training
    assert (sweep / "frequency.png").read_bytes().startswith(PNG_MAGIC)
    assert not (sweep / "frequency_curves.png").exists()

    with open(sweep / "report.csv") as f:
        (row,) = csv.DictReader(f)
    assert float(row["val/ce_mean"]) == pytest.approx(3.2) and float(
        row["val/ce_calibrated_mean"]
    ) == pytest.approx(3.1)
    assert float(row["val/acc_mean"]) == pytest.approx(0.3) and float(
        row["val/temperature_mean"]
    ) == pytest.approx(1.1)
    # the lowest in training, not the evaluation's
    assert float(row["best/val/ce_mean"]) == pytest.approx(2.1)
    assert "whole val split (36,032 tokens)" in (sweep / "report.md").read_text()


def test_the_interpolation_point_is_the_smallest_size_that_fits_its_training_set():
    from nanolab.plots import interpolation_point
    from nanolab.results import Row, RunResult

    def row(params: float, *train_accs: float) -> Row:
        runs = [
            RunResult(
                dir=Path("r"),
                status="finished",
                error="",
                seed=seed,
                params={},
                records=[],
                values={"params": params, "train_eval/acc": acc},
            )
            for seed, acc in enumerate(train_accs)
        ]
        return Row({}, runs)

    # means 0.40, 0.955, 0.968, 0.970: the best is 0.970, and 0.955 is more than 0.01 below it
    assert (
        interpolation_point([row(1e3, 0.40), row(1e4, 0.95, 0.96), row(2e4, 0.968), row(4e4, 0.97)])
        == 2e4
    )
    assert interpolation_point([row(1e3, 0.30), row(1e4, 0.85)]) is None  # never fits: no point


def test_keys_that_change_nothing_stay_out_of_names_columns_resume_and_wandb(tmp_path):
    """config.CHANGES_NOTHING, defined once, decides for the run and sweep-job names, compare's
    columns, the resume comparison and the W&B config."""
    from nanolab.config import CHANGES_NOTHING
    from nanolab.launch import run_name
    from nanolab.results import read_run
    from nanolab.resume import resume_changes
    from nanolab.tracking import wandb_config

    free = ["resume=true", "allow_changes=[x]", "fresh_optimizer=true", "device=cpu"]
    free += ["compile=true", "optim.fused=true", "logger.mode=offline", "+logger.tags=[a]"]
    assert run_name(["optim.lr=0.01", *free, "loss=mse"]) == "loss=mse,optim.lr=0.01"
    fake_run(tmp_path / "0_a", ["loss=mse", *free], 1, {"val/ce": 2.0})
    assert read_run(tmp_path / "0_a").params == {"loss": "mse"}
    cfg = compose_train()
    config = wandb_config(cfg, {})
    assert not [k for k in CHANGES_NOTHING if k.split(".")[0] in config and "." not in k]
    assert "fused" not in config["optim"] and config["optim"]["lr"] == cfg.optim.lr
    saved = OmegaConf.to_container(cfg, resolve=True)
    now = OmegaConf.to_container(compose_train("device=cpu", "optim.fused=true"), resolve=True)
    assert resume_changes(tmp_path / "last.pt", saved, now, []) == []


def write_evals(job: Path, points: list[tuple[int, float, float]], per_step: int = 64) -> None:
    """A run's metrics.jsonl holding only evaluations (step, val/ce, val/acc)."""
    records = [
        {"step": s, "tokens": per_step * s, "time_s": 1.0 + s, "val/ce": ce, "val/acc": acc}
        for s, ce, acc in points
    ]
    (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_steps_and_tokens_to_a_target_are_interpolated_between_evaluations(tmp_path):
    sweep = tmp_path / "sweep"
    for job, loss, seed, points in [
        # 2.0 lies halfway between step 10 (2.5) and step 20 (1.5): step 15, 960 tokens
        ("0_a", "ce", 1, [(0, 4.0, 0.1), (10, 2.5, 0.3), (20, 1.5, 0.6)]),
        # reached exactly at step 20
        ("1_b", "ce", 2, [(0, 4.0, 0.1), (10, 3.0, 0.2), (20, 2.0, 0.4)]),
        ("2_c", "mse", 1, [(0, 4.0, 0.1), (10, 3.0, 0.2), (20, 2.5, 0.3)]),  # never
    ]:
        fake_run(sweep / job, [f"loss={loss}"], seed, {})
        write_evals(sweep / job, points)
    compare([str(sweep)], sort="val/ce", target="val/ce=2.0")
    rows = read_csv(sweep / "report.csv")
    assert float(rows["ce"]["target/steps_mean"]) == pytest.approx(17.5)
    assert float(rows["ce"]["target/steps_std"]) == pytest.approx(math.sqrt(12.5))
    assert float(rows["ce"]["target/tokens_mean"]) == pytest.approx(64 * 17.5)
    assert (rows["ce"]["target_reached"], rows["mse"]["target_reached"]) == ("2", "0")
    assert rows["mse"]["target/steps_mean"] == ""
    report = (sweep / "report.md").read_text()
    assert "## Steps and tokens to val/ce <= 2" in report
    assert "| mse | 0 of 1 | not reached | not reached |" in report
    # an accuracy counts up: 0.5 is reached at step 10 + 10 * (0.5 - 0.3) / 0.3 by seed 1 only
    compare([str(sweep)], sort="val/ce", target="val/acc=0.5")
    rows = read_csv(sweep / "report.csv")
    assert float(rows["ce"]["target/steps_mean"]) == pytest.approx(10 + 10 * 0.2 / 0.3)
    assert rows["ce"]["target_reached"] == "1"


def test_a_bad_or_unreachable_target_is_named(tmp_path, caplog):
    fake_run(tmp_path / "0_a", ["loss=ce"], 1, {"val/ce": 2.0})
    with pytest.raises(ConfigError, match=r"--target val/xyz=1: no run logs val/xyz; they log"):
        compare([str(tmp_path)], target="val/xyz=1")
    with pytest.raises(ConfigError, match=r"--target val/ce: give <metric>=<number>"):
        compare([str(tmp_path)], target="val/ce")
    compare([str(tmp_path)], target="val/ce=0.5")
    assert "no finished run reaches val/ce <= 0.5" in caplog.text


def test_the_critical_batch_size_of_a_known_trade_off_is_recovered():
    from nanolab.critical_batch import bootstrap, fit

    # S = 100·(1 + 2000/B) at B = 256 .. 16384 tokens per step, seeds off by ±2%
    seeds = {
        b: [100 * (1 + 2000 / b) * f for f in (0.98, 1.0, 1.02)] for b in (256, 1024, 4096, 16384)
    }
    fitted = fit([(b, sum(s) / 3) for b, s in seeds.items()])
    assert fitted.b_crit == pytest.approx(2000, rel=0.02) and fitted.s_min == pytest.approx(
        100, rel=0.02
    )
    low, high = bootstrap(seeds)
    assert low < 2000 < high and high / low < 1.5
    assert bootstrap({b: s[:1] for b, s in seeds.items()}) is None


def test_a_batch_size_sweep_reports_its_critical_batch_size(tmp_path):
    """Per batch size, the learning rate with the fewest steps to the target is the point."""
    sweep = tmp_path / "sweep"
    for n, (batch, lr, steps) in enumerate(
        [(256, "1e-3", 900), (256, "3e-3", 850), (1024, "3e-3", 300), (4096, "3e-3", 160)]
        + [(4096, "1e-2", 149), (16384, "1e-2", 113)]
    ):
        job = sweep / f"{n}_b{batch}_lr{lr}"
        fake_run(job, [f"trainer.batch_size={batch // 64}", f"optim.lr={lr}"], 1, {})
        write_evals(job, [(0, 4.0, 0.0), (steps, 2.0, 0.5)], per_step=batch)
    compare([str(sweep)], sort="val/ce", target="val/ce=2.0")
    report = (sweep / "report.md").read_text()
    assert "## Critical batch size (to val/ce <= 2)" in report
    assert "one seed per batch size: no interval" in report
    assert "| 256 | 4 | 3e-3 | 850 |" in report and "| 4096 | 64 | 1e-2 | 149 |" in report
    assert (sweep / "steps_vs_tokens.png").read_bytes()[:8] == PNG_MAGIC


def test_a_batch_size_sweep_reports_its_lr_rule_and_noise_scale(tmp_path):
    """Best lrs 1e-3, 2e-3, 4e-3 at 256, 1024, 4096 tokens per step: lr ∝ B^0.5; the largest
    batch's best lr is the end of its grid. B_simple is read where each run reaches the target."""
    sweep = tmp_path / "sweep"
    best = {256: 1e-3, 1024: 2e-3, 4096: 4e-3, 16384: 8e-3}
    for n, (batch, factor) in enumerate((b, f) for b in best for f in (0.5, 1, 2)):
        lr = best[batch] * factor
        if batch == 16384 and factor == 2:
            continue  # the grid stops at the best lr
        job = sweep / f"{n}_b{batch}_lr{lr:g}"
        fake_run(job, [f"trainer.batch_size={batch // 64}", f"optim.lr={lr:g}"], 1, {})
        steps = round(100 * (1 + 2000 / batch) * (1.2 if factor != 1 else 1.0))
        records = [
            {"step": 0, "tokens": 0, "time_s": 1.0, "val/ce": 4.0},
            {"step": 5, "tokens": 5 * batch, "time_s": 2.0, "noise/b_simple": 100.0},
            {"step": 10, "tokens": 10 * batch, "time_s": 2.0, "noise/b_simple": 150.0},
            {"step": 10, "tokens": 10 * batch, "time_s": 2.0, "val/ce": 3.0},
            {
                "step": steps - 1,
                "tokens": (steps - 1) * batch,
                "time_s": 3.0,
                "noise/b_simple": 900.0,
            },
            {"step": steps, "tokens": steps * batch, "time_s": 3.0, "val/ce": 2.0},
        ]
        (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    compare([str(sweep)], sort="val/ce", target="val/ce=2.0")
    report = (sweep / "report.md").read_text()
    assert "lr ∝ B^k with k = 0.50" in report
    assert "| 1024 | 0.001 0.002 0.004 | 0.002 |" in report
    assert "At an end of the values tried (the optimum may lie beyond; widen the grid): 16384" in (
        report
    )
    # the critical-batch table: steps 300 at 1024 tokens per step, B_simple 150 then 900
    assert "| 1024 | 16 | 0.002 | 295 | 3.02e+05 | 295 | 150 | 900 |" in report
    for png in ("lr_vs_batch.png", "b_simple.png"):
        assert (sweep / png).read_bytes()[:8] == PNG_MAGIC


def test_runs_with_frequency_metrics_get_per_bin_tables_and_figures(tmp_path):
    """Final ce per frequency bin, mean ± std over seeds by hand; the bins described."""
    sweep = tmp_path / "sweep"

    def freq(ce0: float, ce1: float) -> dict:
        bins = {"b0": (ce0, 0.7, 1, 1000), "b1": (ce1, 0.3, 40, 0)}
        return {
            f"{split}_freq/{b}/{m}": v
            for split in ("val", "train")
            for b, (ce, share, classes, least) in bins.items()
            for m, v in (("ce", ce), ("acc", 0.5), ("share", share))
            + (("classes", classes), ("min_count", least))
        }

    for job, (loss, seed, ce0, ce1) in enumerate(
        [("ce", 1, 1.0, 5.0), ("ce", 2, 1.2, 5.4), ("mse", 1, 2.0, 7.0), ("mse", 2, 2.0, 8.0)]
    ):
        fake_run(
            sweep / f"{job}_loss={loss},seed={seed}",
            [f"loss={loss}"],
            seed,
            {"val/ce": 2.0, "val/acc": 0.5, **freq(ce0, ce1)},
        )
    compare([str(sweep)], sort="val/ce")
    report = (sweep / "report.md").read_text()
    assert "## By token frequency (val)" in report and "## By token frequency (train)" in report
    assert "| b1 | 40 | 0 | 0.3000 |" in report
    assert "| ce | 2 | 1.100 ± 0.141 | 5.200 ± 0.283 |" in report
    assert "| mse | 2 | 2.000 ± 0.000 | 7.500 ± 0.707 |" in report
    for name in ("frequency.png", "frequency_curves.png"):
        assert (sweep / name).read_bytes().startswith(PNG_MAGIC)


def test_each_frequency_bins_fall_since_the_first_evaluation_is_a_run_value():
    from nanolab.results import run_values

    records = [
        {"step": 0, "tokens": 0, "time_s": 1.0, "val/ce": 10.8, "train_freq/b0/ce": 10.5},
        {"step": 9, "tokens": 90, "time_s": 2.0, "val/ce": 6.0, "train_freq/b0/ce": 4.0},
    ]
    values = run_values(records, {"status": "finished", "wall_time_s": 2.0})
    assert values["train_freq/b0/ce"] == 4.0
    assert values["train_freq/b0/ce_drop"] == pytest.approx(6.5)


def test_the_best_value_of_a_swept_number_per_line_and_panels(tmp_path):
    """The μP transfer layout: val/ce against lr, a line per width, a panel per
    parametrization; report.md says where each line's best lr lies and if it is interior."""
    sweep = tmp_path / "sweep"
    losses = {  # (parametrization, width) -> val/ce at lr 1e-3, 2e-3, 4e-3
        ("sp", "64"): (2.0, 1.8, 1.9),
        ("sp", "256"): (1.7, 1.9, 2.4),
        ("mup", "64"): (2.0, 1.8, 1.9),
        ("mup", "256"): (1.9, 1.6, 1.7),
    }
    job = 0
    for (p, width), values in losses.items():
        for lr, value in zip(("0.001", "0.002", "0.004"), values, strict=True):
            overrides = [f"model.parametrization={p}", f"model.n_embd={width}", f"optim.lr={lr}"]
            fake_run(sweep / f"{job}_run", overrides, 1, {"val/ce": value, "val/acc": 0.3})
            job += 1
    compare([str(sweep)], sort="val/ce", panels="model.parametrization")
    report = (sweep / "report.md").read_text()
    section = report[report.index("### Best optim.lr by val/ce") :]
    assert "| model.parametrization=sp,model.n_embd=256 | 0.001 0.002 0.004 | 0.001 (#1) | " in (
        section
    )
    assert "lowest tried (a bound)" in section
    assert "| model.parametrization=mup,model.n_embd=256 | 0.001 0.002 0.004 | 0.002 (#2) |" in (
        section
    )
    assert (sweep / "val_ce_vs_optim.lr.png").read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ConfigError, match="--panels model.depth is not a key"):
        compare([str(sweep)], sort="val/ce", panels="model.depth")
