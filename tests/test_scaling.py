"""Compute-optimal sizing: FLOPs per token against a hand count, the steps a budget buys, the
parabola and power-law fits on synthetic points with known answers, and the report and refusals
of nanolab.scaling."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from conftest import compose_train

from nanolab import ConfigError
from nanolab.distributed import World
from nanolab.flops import budget_iters, flops_per_token, matrix_params
from nanolab.model import GPTConfig
from nanolab.scaling import (
    Point,
    budget_curves,
    fit_laws,
    fit_parabola,
    read_points,
    scaling,
)
from nanolab.trainer import apply_flops_budget


def test_flops_per_token_against_a_hand_count():
    tied = GPTConfig(n_layer=2, n_head=4, n_embd=64, vocab_size=65, block_size=64)
    # per block: qkv 64x192 + proj 64x64 + MLP 64x256 + 256x64 = 49,152; head 65x64 = 4,160
    assert matrix_params(tied) == 2 * 49_152 + 4_160
    # 6N + 12 L H Q T = 6 * 102,464 + 12 * 2 * 4 * 16 * 64
    assert flops_per_token(tied) == 6 * 102_464 + 98_304
    # an untied head is one more matrix of the same size: counted once either way (the
    # embedding lookup is no matmul)
    untied = GPTConfig(
        n_layer=2, n_head=4, n_embd=64, vocab_size=65, block_size=64, tie_embeddings=False
    )
    assert matrix_params(untied) == matrix_params(tied)


def test_flops_budget_sets_max_iters_and_the_schedule_follows():
    cfg = compose_train("trainer.flops_budget=1e12", "model.n_layer=2", "model.n_embd=64")
    apply_flops_budget(cfg, World())
    shape = GPTConfig(n_layer=2, n_head=4, n_embd=64, vocab_size=65, block_size=64)
    tokens = 12 * 64  # batch 12 x context 64
    assert cfg.trainer.max_iters == int(1e12 // (flops_per_token(shape) * tokens)) == 1825
    assert cfg.schedule.decay_iters == 1825
    with pytest.raises(ConfigError, match="less than one step of this model"):
        budget_iters(1e6, shape, tokens)


def test_a_parabola_fit_recovers_a_known_vertex_from_noisy_points():
    rng = random.Random(0)
    x = [math.log(n) for n in (1e4, 2e4, 4e4, 8e4, 1.6e5, 3.2e5)]
    vertex = math.log(5e4)
    y = [0.3 * (v - vertex) ** 2 + 1.5 + rng.gauss(0, 0.002) for v in x]
    a, b, _ = fit_parabola(x, y)
    assert a == pytest.approx(0.3, rel=0.05)
    assert math.exp(-b / (2 * a)) == pytest.approx(5e4, rel=0.05)


def synthetic_points(exponent: float, noise: float, seed: int = 0) -> list[Point]:
    """IsoFLOP points whose optimum follows N_opt = 0.1 C^exponent, with D = C / 6N."""
    rng = random.Random(seed)
    points = []
    for budget in (1e12, 4e12, 1.6e13, 6.4e13):
        n_opt = 0.1 * budget**exponent
        for factor in (0.25, 0.5, 1.0, 2.0, 4.0):
            n = round(n_opt * factor)
            loss = 2.0 * budget**-0.05 + 0.2 * math.log(factor) ** 2 + rng.gauss(0, noise)
            tokens = round(budget / (6 * n))
            points.append(
                Point(
                    budget=budget, n=n, flops_per_token=6 * n, tokens=tokens, steps=tokens // 1024,
                    loss=loss, epochs=tokens / 1e6, n_layer=2, n_embd=64, head_dim=16,
                    block_size=64, vocab_size=65, tokens_per_step=1024,
                )
            )  # fmt: skip
    return points


def test_power_laws_recover_a_known_exponent_with_an_interval_that_holds_it():
    curves = budget_curves(synthetic_points(0.5, noise=0.003))
    assert all(not c.problem for c in curves)
    n_law, d_law, loss_law = fit_laws(curves)
    assert n_law.exponent == pytest.approx(0.5, abs=0.03)
    assert n_law.interval[0] < 0.5 < n_law.interval[1]
    assert n_law.exponent + d_law.exponent == pytest.approx(1.0, abs=1e-9)  # D = C / 6N
    assert loss_law.exponent == pytest.approx(-0.05, abs=0.01)


def test_an_unbracketed_budget_is_flagged_and_left_out():
    points = [p for p in synthetic_points(0.5, 0.0) if not (p.budget == 1e12 and p.n < 0.1e6)]
    curves = budget_curves(points)
    assert curves[0].problem == "lowest at the smallest size: add smaller"
    assert [c.problem for c in curves[1:]] == ["", "", ""]
    assert fit_laws(curves)[0].exponent == pytest.approx(0.5, abs=0.01)


def write_sweep(root: Path, points: list[Point]) -> None:
    for i, p in enumerate(points):
        run = root / f"{i}_run"
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text("[]\n")
        summary = {
            "status": "finished",
            "flops_budget": p.budget,
            "matrix_params": p.n,
            "flops_per_token": p.flops_per_token,
            "train_tokens": 1_000_000,
            "vocab_size": 65,
            "n_layer": p.n_layer,
            "n_embd": 64,
            "head_size": 16,
            "block_size": 64,
        }
        (run / "summary.json").write_text(json.dumps(summary))
        record = {"step": p.steps, "tokens": p.tokens, "time_s": 1.0, "val/ce": p.loss}
        (run / "metrics.jsonl").write_text(json.dumps(record) + "\n")


def test_the_scaling_report_recommends_a_shape_and_refuses_a_bad_budget(tmp_path, capsys):
    write_sweep(tmp_path / "sweep", synthetic_points(0.5, noise=0.002))
    text = scaling([str(tmp_path / "sweep")], recommend_c=1e15)
    assert "a = 0.5" in text and "EXTRAPOLATION" in text and "n_layer=2, n_embd=" in text
    assert "FLOPs/token = 6 N" in text  # the counting convention goes with every result
    assert "Flagged runs" in text  # the synthetic runs see far more than 4 epochs
    for name in ("isoflop.md", "isoflop.csv", "isoflop.png", "extend.txt"):
        assert (tmp_path / "sweep" / name).is_file()
    for bad in (0.0, -1e12):
        with pytest.raises(ConfigError, match="must be a budget in FLOPs > 0"):
            scaling([str(tmp_path / "sweep")], recommend_c=bad)


def test_a_sweep_folder_is_read_as_data_and_a_run_without_numbers_left_out(tmp_path):
    """nanolab.scaling reads summary.json's numbers only: a value that is text (an
    interpolation, say) leaves its run out; nothing is resolved."""
    points = synthetic_points(0.5, noise=0.002)
    write_sweep(tmp_path / "sweep", points)
    odd = tmp_path / "sweep" / "0_run" / "summary.json"
    odd.write_text(json.dumps(json.loads(odd.read_text()) | {"n_embd": "${oc.env:HOME}"}))
    assert len(read_points([str(tmp_path / "sweep")])) == len(points) - 1
