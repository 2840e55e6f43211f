"""nanolab.prune in process on a tiny trained run: magnitude pruning picks the known entries,
structured pruning writes a smaller checkpoint that loads and scores as reported, IMP keeps
its mask through retraining, int8 and the measurements add their rows and columns, and bad
amounts are refused before any work."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_train
from hydra import compose, initialize_config_module
from torch import nn

from nanolab import ConfigError
from nanolab.data import TokenData
from nanolab.launch import RunInfo
from nanolab.metrics import evaluate_split
from nanolab.prune import prune_run
from nanolab.sample import sample
from nanolab.sparsity import apply_masks, magnitude_masks
from nanolab.train import train
from nanolab.weights import model_from_weights, read_weights


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("trained")
    cfg = compose_train(
        *TINY, "trainer.max_iters=12", "trainer.eval_interval=12", "logger.mode=disabled"
    )
    train(cfg, RunInfo(dir=run_dir, group=None, name=None))
    return run_dir


def prune(*overrides: str) -> list[dict]:
    with initialize_config_module("nanolab.configs", version_base="1.3"):
        return prune_run(compose("prune", overrides=[*overrides, "device=cpu"]))


def test_global_magnitude_pruning_zeroes_the_smallest_weights_over_all_layers():
    a, b = nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        a.weight.copy_(torch.tensor([[1.0, -2.0], [3.0, -4.0]]))
        b.weight.copy_(torch.tensor([[0.5, 5.0], [-6.0, 0.1]]))
    modules = {"a": a, "b": b}
    apply_masks(modules, magnitude_masks({n: m.weight for n, m in modules.items()}, 0.5))
    assert a.weight.tolist() == [[0.0, 0.0], [3.0, -4.0]]
    assert b.weight.tolist() == [[0.0, 5.0], [-6.0, 0.0]]
    assert isinstance(a.weight, nn.Parameter)

    hundred = torch.arange(1.0, 101.0).view(10, 10) * torch.tensor([1.0, -1.0]).repeat(5)
    mask = magnitude_masks({"w": hundred}, 0.333)["w"]
    assert (~mask).flatten().nonzero().flatten().tolist() == list(range(33))  # round(33.3)


def test_structured_pruning_writes_a_smaller_model_that_scores_as_reported(trained, tmp_path):
    rows = prune(
        f"checkpoint={trained}",
        "method=structured",
        "amounts=[0,0.5]",
        "finetune_steps=2",
        f"out={tmp_path}",
    )
    assert [(r["amount"], r["weights"]) for r in rows] == [(0, "float32"), (0.5, "float32")]
    assert rows[1]["params"] < rows[0]["params"] and rows[1]["sparsity"] == pytest.approx(0.5)
    weights = read_weights(rows[1]["checkpoint"], "checkpoint")
    model = model_from_weights(weights, weights.run.data_meta, "checkpoint").eval()
    assert (model.config.n_head, model.config.head_dim, model.config.mlp_hidden) == (1, 16, 64)
    assert model.num_params() == rows[1]["params"] - model.transformer.wpe.weight.numel()
    val = TokenData.read(Path(weights.run.data_dir)).val
    scored = evaluate_split(model, val, weights.run.config.loss, 64)
    assert scored["ce"] == pytest.approx(rows[1]["val/ce"], abs=1e-6)
    assert rows[1]["val/ce"] == rows[1]["finetuned/val/ce"] != rows[1]["pruned/val/ce"]
    assert (tmp_path / "prune.md").is_file() and (tmp_path / "prune.png").is_file()
    # it samples as any checkpoint does, with int8 weights too
    with initialize_config_module("nanolab.configs", version_base="1.3"):
        cfg = compose(
            "sample",
            overrides=[
                f"checkpoint={rows[1]['checkpoint']}",
                "quantize=int8",
                "max_new_tokens=5",
                "num_samples=2",
                "device=cpu",
            ],
        )
    texts = sample(cfg)
    assert len(texts) == 2 and all(len(t) == 6 for t in texts)  # the prompt "\n" + 5


def test_imp_rounds_keep_their_masks_through_retraining(trained, tmp_path):
    rows = prune(
        f"checkpoint={trained}",
        "method=imp",
        "amounts=[0.75,0.5]",
        "rewind_step=4",
        f"out={tmp_path}",
    )
    assert [r["amount"] for r in rows] == [0.5, 0.75]  # rounds in increasing order
    for r in rows:
        assert r["sparsity"] == pytest.approx(r["amount"], abs=1e-3)
        assert r["finetuned/sparsity"] == r["sparsity"]
        assert r["val/ce"] == r["finetuned/val/ce"]
    with pytest.raises(
        ConfigError, match=r"rewind_step=12 must lie in \[0, trainer.max_iters=12\)"
    ):
        prune(f"checkpoint={trained}", "method=imp", "amounts=[0.5]", "rewind_step=12")


def test_int8_and_measure_add_rows_and_columns(trained, tmp_path):
    rows = prune(
        f"checkpoint={trained}",
        "amounts=[0,0.5]",
        "int8=true",
        "measure=true",
        "measure_batch=2",
        "measure_tokens=4",
        f"out={tmp_path}",
    )
    assert [(r["amount"], r["weights"]) for r in rows] == [
        (0, "float32"),
        (0, "int8"),
        (0.5, "float32"),
        (0.5, "int8"),
    ]
    dense, int8 = rows[0], rows[1]
    assert int8["memory_bytes"] < dense["memory_bytes"] and int8["disk_bytes"] < dense["disk_bytes"]
    assert abs(int8["val/ce"] - dense["val/ce"]) < 0.05
    # masking saves no memory; the dense file's size does not change either
    assert rows[2]["memory_bytes"] == dense["memory_bytes"]
    assert all(r["forward_ms"] > 0 and r["sample_tok_s_b1"] > 0 for r in rows)
    with open(tmp_path / "prune.csv") as f:
        table = list(csv.DictReader(f))
    assert [row["weights"] for row in table] == ["float32", "int8", "float32", "int8"]
    assert float(table[1]["memory_bytes"]) == int8["memory_bytes"]


def test_bad_amounts_are_refused_before_any_work(trained, tmp_path):
    out = tmp_path / "report"
    with pytest.raises(ConfigError, match="would remove 2 of the 2 heads of every layer"):
        prune(f"checkpoint={trained}", "method=structured", "amounts=[0.8]", f"out={out}")
    with pytest.raises(ConfigError, match=r"amounts=\[1.0\] must be fractions in \[0, 1\)"):
        prune(f"checkpoint={trained}", "amounts=[1.0]", f"out={out}")
    with pytest.raises(ConfigError, match="method='random' must be one of"):
        prune(f"checkpoint={trained}", "method=random", f"out={out}")
    assert not out.exists()
