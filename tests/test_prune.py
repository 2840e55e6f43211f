"""nanolab.prune: global magnitude pruning picks the known entries, reaches the asked sparsity,
keeps the mask through fine-tuning and writes its report."""

from __future__ import annotations

import torch
from torch import nn

from nanolab.prune import prune_globally


def test_global_magnitude_pruning_zeroes_the_smallest_weights_over_all_layers():
    a, b = nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        a.weight.copy_(torch.tensor([[1.0, -2.0], [3.0, -4.0]]))
        b.weight.copy_(torch.tensor([[0.5, 5.0], [-6.0, 0.1]]))
    masks = prune_globally({"a": a, "b": b}, 0.5)  # the 4 smallest |w| of 8: 0.1, 0.5, 1, 2
    assert a.weight.tolist() == [[0.0, 0.0], [3.0, -4.0]] and b.weight.tolist() == [
        [0.0, 5.0],
        [-6.0, 0.0],
    ]
    assert (
        masks["a"].tolist() == [[0, 0], [1, 1]]
        and isinstance(a.weight, nn.Parameter)
        and not hasattr(a, "weight_orig")
    )

    hundred = nn.Linear(10, 10, bias=False)
    with torch.no_grad():
        hundred.weight.copy_(
            torch.arange(1.0, 101.0).view(10, 10) * torch.tensor([1.0, -1.0]).repeat(5)
        )
    prune_globally({"w": hundred}, 0.333)
    zeroed = (hundred.weight == 0).flatten().nonzero().flatten().tolist()
    assert zeroed == list(range(33))  # round(0.333 * 100) = 33: magnitudes 1..33
