"""Loss-independent evaluation metrics against synthetic data with known answers."""

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch.nn import functional as F

from nanolab.losses import LOSSES
from nanolab.metrics import TokenTotals, calibrated_ce, fit_temperature

CE = OmegaConf.create({"name": "ce", "ignore_index": -1})


def synthetic(
    n: int = 20000, classes: int = 10, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets drawn from softmax(logits): perfectly calibrated by construction."""
    g = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(n, classes, generator=g)
    targets = torch.multinomial(logits.softmax(-1), 1, generator=g).squeeze(1)
    return logits, targets


def metrics_of(
    logits: torch.Tensor, targets: torch.Tensor, calibrate: bool = False, batch: int = 4096
) -> dict:
    totals = TokenTotals(calibrate=calibrate)
    for chunk in range(0, len(targets), batch):  # in batches, as evaluation feeds them
        totals.update(
            logits[chunk : chunk + batch], targets[chunk : chunk + batch], LOSSES["ce"], CE
        )
    return totals.compute()


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_temperature_scaling_recovers_a_known_temperature(true_t):
    logits, targets = synthetic()
    assert fit_temperature(logits * true_t, targets) == pytest.approx(true_t, rel=0.05)


def test_temperature_fit_finds_the_minimum_at_gpt2_vocabulary_near_uniform_logits():
    # The start of a GPT-2-vocabulary run: logits near zero, so the loss is almost flat in T.
    g = torch.Generator().manual_seed(0)
    logits = 0.05 * torch.randn(300, 50257, generator=g)
    targets = torch.multinomial((logits / 0.05).softmax(-1), 1, generator=g).squeeze(1)
    t = fit_temperature(logits, targets)
    assert t == pytest.approx(0.05, rel=0.1)

    def nll(temperature: float) -> float:
        return F.cross_entropy(logits / temperature, targets).item()

    assert nll(t) <= min(nll(1.02 * t), nll(t / 1.02), nll(1.0) - 0.5)


def test_calibrated_ce_repairs_an_overconfident_model_and_leaves_a_calibrated_one():
    logits, targets = synthetic()
    calibrated = metrics_of(logits, targets, calibrate=True)
    assert calibrated["ce_calibrated"] == pytest.approx(calibrated["ce"], abs=0.005)
    over = metrics_of(3 * logits, targets, calibrate=True)
    assert over["ce"] > calibrated["ce"] + 0.3
    assert over["ce_calibrated"] == pytest.approx(calibrated["ce"], abs=0.01)
    assert over["temperature"] == pytest.approx(3.0, rel=0.05)


def test_ece_is_near_zero_when_calibrated_and_large_when_not():
    logits, targets = synthetic()
    assert metrics_of(logits, targets)["ece"] < 0.015
    assert metrics_of(4 * logits, targets)["ece"] > 0.1


def test_brier_top5_and_accuracy_match_naive_formulas():
    logits, targets = synthetic(n=3000)
    m = metrics_of(logits, targets)
    one_hot = F.one_hot(targets, 10).float()
    assert m["brier"] == pytest.approx(
        ((logits.softmax(-1) - one_hot) ** 2).sum(-1).mean().item(), rel=1e-5
    )
    top5 = torch.tensor(
        [int(t) in row.argsort(descending=True)[:5].tolist() for row, t in zip(logits, targets)]
    )
    assert m["acc_top5"] == pytest.approx(top5.float().mean().item())
    assert m["acc"] == pytest.approx((logits.argmax(-1) == targets).float().mean().item())
    assert m["bpt"] == pytest.approx(m["ce"] / math.log(2))


def test_cross_fitting_scores_no_token_with_a_temperature_fitted_on_it():
    logits, targets = synthetic(n=2000)
    half = 1000
    t_first, t_second = (
        fit_temperature(logits[:half], targets[:half]),
        fit_temperature(logits[half:], targets[half:]),
    )
    expected = (
        F.cross_entropy(logits[half:] / t_first, targets[half:], reduction="sum")
        + F.cross_entropy(logits[:half] / t_second, targets[:half], reduction="sum")
    ) / 2000
    assert calibrated_ce(logits, targets) == pytest.approx(expected.item(), rel=1e-6)


def test_ignored_targets_count_in_no_metric():
    logits, targets = synthetic(n=1000)
    masked = targets.clone()
    masked[::4] = -1
    keep = masked != -1
    assert metrics_of(logits, masked, calibrate=True) == pytest.approx(
        metrics_of(logits[keep], targets[keep], calibrate=True)
    )


def test_tokens_past_the_calibration_cap_are_scored_at_the_kept_tokens_temperature(monkeypatch):
    # A cap of 3000 rows of 10 classes: the first 3000 tokens are cross-fitted among themselves,
    # the other 17,000 scored at the temperature fitted on those 3000.
    import nanolab.metrics

    monkeypatch.setattr(nanolab.metrics, "CALIBRATION_ELEMENTS", 3000 * 10)
    logits, targets = synthetic()
    logits = 3 * logits  # overconfident: the true temperature is 3
    targets[::7] = -1  # ignored targets are kept under the cap (as rows) but count nowhere
    m = metrics_of(logits, targets, calibrate=True)
    kept = targets[:3000] != -1
    t = fit_temperature(logits[:3000][kept], targets[:3000][kept])
    past = F.cross_entropy(
        logits[3000:] / t, targets[3000:], ignore_index=-1, reduction="sum"
    ).item()
    n_kept, n_all = int(kept.sum()), int((targets != -1).sum())
    expected = (calibrated_ce(logits[:3000][kept], targets[:3000][kept]) * n_kept + past) / n_all
    assert m["ce_calibrated"] == pytest.approx(expected, rel=1e-6)  # float32 sums batch by batch
    assert m["temperature"] == pytest.approx(t, rel=1e-12) and m["temperature"] == pytest.approx(
        3.0, rel=0.05
    )
    true_ce = metrics_of(logits / 3, targets)["ce"]
    assert m["ce_calibrated"] == pytest.approx(true_ce, abs=0.005) and m["ce"] > true_ce + 0.3
