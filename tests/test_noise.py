"""The gradient noise scale against a known answer (least squares), inside the training step,
in real runs (logged, resumed exactly, changing nothing else) and its bad settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_train

from nanolab import ConfigError
from nanolab.config import check_config
from nanolab.distributed import World
from nanolab.launch import RunInfo
from nanolab.noise import NoiseScale, squared_grad_norm
from nanolab.run import batch_loss, build_run, train_step
from nanolab.runtime import Runtime
from nanolab.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (conftest)

RUN = [*TINY, "logger.mode=disabled", "trainer.log_interval=2", "trainer.eval_interval=4"]
NOISE = ["noise_scale.enabled=true", "trainer.grad_accum=2"]


def least_squares_noise_scale(
    b_small: int, micro_batches: int, steps: int
) -> tuple[float, int, float, torch.Tensor]:
    """b_simple measured on least squares at a fixed point w (no step taken): loss ½(x·w − y)²
    with x ~ N(0, I_d), y = x·w* + ε, ε ~ N(0, σ²). With r = w − w*, one example's gradient
    x(x·r − ε) has mean r and covariance |r|²I + rrᵀ + σ²I, so B_simple = tr Σ/|G|² is
    (d + 1) + dσ²/|r|²."""
    g = torch.Generator().manual_seed(0)
    d, sigma = 20, 1.0
    w_star = torch.randn(d, generator=g, dtype=torch.float64)
    model = torch.nn.Linear(d, 1, bias=False, dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(w_star + torch.randn(d, generator=g, dtype=torch.float64) / d**0.5)
    noise = NoiseScale(ema=0.9998, b_small=b_small, b_big=b_small * micro_batches)
    for _ in range(steps):
        x = torch.randn(b_small * micro_batches, d, generator=g, dtype=torch.float64)
        y = x @ w_star + sigma * torch.randn(len(x), generator=g, dtype=torch.float64)
        norms = []
        for rows in (slice(0, b_small), slice(None)):  # the first micro-batch, the whole step
            model.zero_grad()
            (0.5 * (model(x[rows]).squeeze(1) - y[rows]).square().mean()).backward()
            norms.append(squared_grad_norm(model))
        noise.observe(*norms)
    return (
        noise.metrics()["noise/b_simple"],
        d,
        sigma,
        (model.weight[0] - w_star).detach().square().sum(),
    )


@pytest.mark.parametrize("micro_batches", [2, 4, 8])
def test_the_noise_scale_of_least_squares_is_recovered_however_the_step_is_split(micro_batches):
    measured, d, sigma, r_sq = least_squares_noise_scale(8, micro_batches, steps=6000)
    truth = (d + 1) + d * sigma**2 / float(r_sq)
    assert measured == pytest.approx(truth, rel=0.10)


def test_the_step_measures_its_first_micro_batch_alone_and_changes_nothing():
    cfg = compose_train(*RUN, *NOISE)
    check_config(cfg)
    measured, reference = (
        build_run(cfg, World(), Runtime.create(torch.device("cpu"), "float32")) for _ in range(2)
    )
    result = train_step(measured)
    # the same first batch, alone, in a copy of the run
    x, y = reference.sampler.next_batch()
    batch_loss(reference, x, y).backward()
    assert float(result.first_micro_sq) == pytest.approx(float(squared_grad_norm(reference.model)))
    # without the measurement the step is the same to the bit
    plain = build_run(
        compose_train(*RUN, "trainer.grad_accum=2"),
        World(),
        Runtime.create(torch.device("cpu"), "float32"),
    )
    unmeasured = train_step(plain)
    assert unmeasured.first_micro_sq is None
    assert (unmeasured.loss, unmeasured.grad_norm) == (result.loss, result.grad_norm)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_the_noise_scale_is_logged_and_resumes_exactly(tmp_path):
    def run(directory: Path, *overrides: str) -> None:
        train(
            compose_train(*RUN, *NOISE, *overrides), RunInfo(dir=directory, group=None, name=None)
        )

    run(tmp_path / "straight", "trainer.max_iters=8")
    run(tmp_path / "resumed", "trainer.max_iters=4")
    run(tmp_path / "resumed", "trainer.max_iters=8", "resume=true")
    straight = [r for r in records(tmp_path / "straight") if "noise/b_simple" in r]
    resumed = [r for r in records(tmp_path / "resumed") if "noise/b_simple" in r]
    assert [r["step"] for r in straight] == [2, 4, 6, 8]
    keys = ("noise/grad_sq", "noise/trace_cov", "noise/b_simple", "train/loss")
    assert [[r[k] for k in keys] for r in straight] == [[r[k] for k in keys] for r in resumed]


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["noise_scale.ema=1"], r"noise_scale.ema=1 must lie in \[0, 1\)"),
        (["trainer.early_stop.target=nan"], "trainer.early_stop.target=nan must be a number"),
        (
            ["noise_scale.enabled=true", "trainer.full_batch=true", "data.train_tokens=4097"],
            "noise_scale.enabled=true needs randomly drawn batches",
        ),
    ],
)
def test_bad_noise_scale_settings_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_config(compose_train(*RUN, *overrides))


def test_one_micro_batch_per_step_is_refused(tmp_path):
    with pytest.raises(
        ConfigError,
        match="needs at least two micro-batches per step on each "
        "process, and this one runs 1: raise trainer.grad_accum",
    ):
        train(
            compose_train(*RUN, "noise_scale.enabled=true", "trainer.max_iters=2"),
            RunInfo(dir=tmp_path, group=None, name=None),
        )
