"""Evaluation over two ranks (mp.spawn): every token scored once, the same numbers as one
process, the metrics by token frequency too."""

import numpy as np
import pytest
import torch
from test_metrics import CE, metrics_of, synthetic

from nanolab.frequency import frequency_bins
from nanolab.losses import LOSSES
from nanolab.metrics import TokenTotals

# Frequency bins of the synthetic data's 10 classes, as if class c had 10 - c training targets.
BINS = frequency_bins(np.arange(10, 0, -1), "equal_mass", 4)


def _ranks_evaluate(
    rank: int, store: str, logits: torch.Tensor, targets: torch.Tensor, cap: int, out: str
) -> None:
    """One of two gloo ranks: evaluates its consecutive half of the batches, combines, and rank
    0 saves the metrics and its token accounting."""
    import torch.distributed as dist

    import nanolab.metrics
    from nanolab.distributed import World

    nanolab.metrics.CALIBRATION_ELEMENTS = cap
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        totals = TokenTotals(calibrate=True, freq=BINS)
        half = len(targets) // 2
        mine = slice(0, half) if rank == 0 else slice(half, None)
        for x, y in zip(logits[mine].split(1000), targets[mine].split(1000)):
            totals.update(x, y, LOSSES["ce"], CE)
        totals.combine(World(rank=rank, size=2), torch.device("cpu"))
        metrics = totals.compute()
        if rank == 0:
            past = float(totals.sums.get("past_cap_tokens", torch.tensor(0.0)))
            torch.save(
                {
                    "metrics": metrics,
                    "frequency": totals.frequency(),
                    "scored": len(totals._kept()[1]) + past,
                },
                out,
            )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("cap_rows", [20000, 3000])
def test_two_ranks_score_every_token_once_and_match_one_process_under_the_cap(tmp_path, cap_rows):
    # 20000 rows: everything kept, so DDP equals one process exactly. 3000: each rank's 4000
    # rows pass its own cap (1000 scored past it) and rank 1's 3000 kept rows do not fit rank
    # 0's; every token is still scored once, close to one process's value.
    import torch.multiprocessing as mp

    logits, targets = synthetic(n=8000)
    logits = 3 * logits
    out = tmp_path / "rank0.pt"
    mp.spawn(
        _ranks_evaluate,
        args=(str(tmp_path / "store"), logits, targets, cap_rows * 10, str(out)),
        nprocs=2,
    )
    result = torch.load(out)
    assert result["scored"] == 8000
    import nanolab.metrics

    nanolab.metrics.CALIBRATION_ELEMENTS, saved = (
        cap_rows * 10,
        nanolab.metrics.CALIBRATION_ELEMENTS,
    )
    try:
        one = metrics_of(logits, targets, calibrate=True, batch=1000)
    finally:
        nanolab.metrics.CALIBRATION_ELEMENTS = saved
    if cap_rows >= 8000:
        assert result["metrics"]["ce_calibrated"] == pytest.approx(one["ce_calibrated"], rel=1e-9)
    else:
        assert result["metrics"]["ce_calibrated"] == pytest.approx(one["ce_calibrated"], abs=0.005)
    assert result["metrics"]["ce"] == pytest.approx(one["ce"], rel=1e-9)
    one_process = TokenTotals(freq=BINS)
    for x, y in zip(logits.split(1000), targets.split(1000)):
        one_process.update(x, y, LOSSES["ce"], CE)
    assert result["frequency"] == pytest.approx(one_process.frequency(), rel=1e-9)
