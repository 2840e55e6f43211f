"""Metrics by token frequency: the bins of known counts, per-bin metrics that add up to the
overall ones, counts stored with the prepared data, and the bad inputs."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import compose_train
from test_train import records, run_in_process

from nanolab import ConfigError, DataError
from nanolab.config import check_config
from nanolab.data import COUNTS, TokenData
from nanolab.frequency import frequency_bins
from nanolab.losses import LOSSES
from nanolab.metrics import TokenTotals


def test_equal_mass_bins_of_known_counts():
    """Sorted counts 50 | 20 10 | 10 5 5 0 0 start at 0, 50, 70, 80, ... of 100 targets: the
    quarters they start in are 0, 2, 2, 3, 3, 3 and (never seen) the last; quarter 1 is empty
    and dropped, a class is never split."""
    counts = np.array([5, 0, 50, 10, 20, 0, 10, 5])
    bins = frequency_bins(counts, "equal_mass", 4)
    assert bins.names == ("b0", "b1", "b2")
    assert bins.of_class.tolist() == [2, 2, 0, 1, 1, 2, 2, 2]
    assert bins.classes == (1, 2, 5) and bins.min_count == (50, 10, 0)


def test_log_bins_of_known_counts():
    """Edges 1, 10.0, 100.1, 1001 (equal steps of log count); a class never seen falls in the
    rarest bin."""
    bins = frequency_bins(np.array([1000, 100, 10, 1, 0]), "log", 3)
    assert bins.of_class.tolist() == [0, 1, 2, 2, 2]
    assert bins.min_count == (1000, 100, 0)


def test_more_than_ten_bins_keep_their_names_in_order():
    bins = frequency_bins(np.arange(100, 0, -1), "equal_mass", 12)
    assert list(bins.names) == sorted(bins.names) and bins.names[0] == "b00"


@pytest.mark.parametrize("scheme", ["equal_mass", "log"])
def test_per_bin_metrics_weighted_by_share_are_the_overall_metrics(scheme):
    g = torch.Generator().manual_seed(0)
    counts = np.floor(1000 / np.arange(1, 51)).astype(np.int64)
    counts[-5:] = 0  # classes never seen in training
    bins = frequency_bins(counts, scheme, 5)
    totals = TokenTotals(calibrate=True, freq=bins)
    cfg = compose_train("loss=ce").loss
    for _ in range(3):
        logits = 2 * torch.randn(97, 50, generator=g)
        targets = torch.randint(50, (97,), generator=g)
        targets[::7] = cfg.ignore_index
        totals.update(logits, targets, LOSSES["ce"], cfg)
    overall, by_bin = totals.compute(), totals.frequency()
    shares = [by_bin[f"{name}/share"] for name in bins.names]
    assert sum(shares) == pytest.approx(1, abs=1e-12)
    for metric in ("ce", "acc"):
        weighted = sum(
            share * by_bin[f"{name}/{metric}"]
            for name, share in zip(bins.names, shares)
            if share > 0
        )
        # exact but for rounding: the overall sums add each batch in float32 first
        assert weighted == pytest.approx(overall[metric], rel=1e-6)
    assert sum(by_bin[f"{name}/classes"] for name in bins.names) == 50
    assert by_bin[f"{bins.names[-1]}/min_count"] == 0


def test_preparation_stores_the_training_counts_and_old_data_is_counted(tmp_path):
    cfg = compose_train("data=shakespeare_char", f"data.dir={tmp_path}").data
    data = TokenData.load(cfg)
    stored = np.load(tmp_path / COUNTS)
    assert (stored == np.bincount(np.asarray(data.train), minlength=data.vocab_size)).all()
    assert stored.sum() == len(data.train)
    (tmp_path / COUNTS).unlink()  # data prepared before the counts were stored
    assert (TokenData.read(tmp_path).train_counts() == stored).all()
    assert not (tmp_path / COUNTS).exists()  # reading never writes


def test_a_run_logs_frequency_metrics_for_both_splits(tmp_path):
    run_in_process(tmp_path, "token_freq.bins=4", "trainer.max_iters=4", "trainer.eval_interval=4")
    last = [r for r in records(tmp_path) if "val/ce" in r][-1]
    names = sorted({k.split("/")[1] for k in last if k.startswith("val_freq/")})
    assert names and names[0] == "b0"
    for split in ("val", "train"):
        assert math.fsum(last[f"{split}_freq/{n}/share"] for n in names) == pytest.approx(1)
        weighted = math.fsum(
            last[f"{split}_freq/{n}/share"] * last[f"{split}_freq/{n}/ce"] for n in names
        )
        prefix = "val" if split == "val" else "train_eval"
        assert weighted == pytest.approx(last[f"{prefix}/ce"], rel=1e-6)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "final/val_freq/b0/ce" in summary


@pytest.mark.parametrize(
    "override,key",
    [("token_freq.scheme=zipf", "token_freq.scheme"), ("token_freq.bins=-1", "token_freq.bins")],
)
def test_bad_frequency_settings_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        check_config(compose_train(override))


def test_frequency_bins_need_training_tokens():
    with pytest.raises(DataError, match="no training tokens"):
        frequency_bins(np.zeros(10, dtype=np.int64), "equal_mass", 4)
