"""Sparsity: Zhu & Gupta's schedule at known steps, magnitude masks, masks through a resume bit
for bit, the penalties' values, structured pruning equal to the masked model, int8 within its
tolerance, and the byte counts of nanolab.footprint."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY, compose_train
from omegaconf import OmegaConf

from nanolab import ConfigError
from nanolab.config import check_config
from nanolab.footprint import csr_state, memory_bytes, saved_bytes
from nanolab.launch import RunInfo
from nanolab.model import GPT, GPTConfig
from nanolab.quantize import check_quantize, int8_weights
from nanolab.sparsity import (
    SparseTraining,
    cubic_sparsity,
    magnitude_masks,
    prunable,
)
from nanolab.structured import group_norms, kept_groups, mask_groups, removed_counts, shrink
from nanolab.train import train


def sparsity_cfg(**values):
    base = dict(
        final=0.8, start=100, end=400, every=100, scope="global", embeddings=False, l1=0.0,
        group_lasso=0.0,
    )  # fmt: skip
    return OmegaConf.create(base | values)


def small_gpt(**options) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=4, n_embd=32, **options)
    return GPT(config)


def test_the_cubic_schedule_at_known_steps():
    # s_t = 0.8 (1 - (1 - (t - 100)/300)^3)
    assert cubic_sparsity(50, 0.8, 100, 400) == 0.0
    assert cubic_sparsity(100, 0.8, 100, 400) == 0.0
    assert cubic_sparsity(250, 0.8, 100, 400) == pytest.approx(0.8 * (1 - 0.5**3))  # 0.7
    assert cubic_sparsity(200, 0.8, 100, 400) == pytest.approx(0.8 * (1 - (2 / 3) ** 3))
    assert cubic_sparsity(400, 0.8, 100, 400) == 0.8 and cubic_sparsity(900, 0.8, 100, 400) == 0.8
    pruner = SparseTraining(sparsity_cfg(end=350), small_gpt(), max_iters=500)
    assert [t for t in range(501) if pruner.due(t)] == [100, 200, 300, 350]
    # end null: three quarters of the run
    assert SparseTraining(sparsity_cfg(end=None), small_gpt(), max_iters=1000).end == 750


def test_magnitude_masks_global_and_per_layer_and_never_regrow():
    a = torch.tensor([[1.0, -2.0], [3.0, -4.0]])
    b = torch.tensor([[0.5, 5.0], [-6.0, 0.1]])
    masks = magnitude_masks({"a": a, "b": b}, 0.5)  # the 4 smallest of 8: 0.1, 0.5, 1, 2
    assert masks["a"].tolist() == [[False, False], [True, True]]
    assert masks["b"].tolist() == [[False, True], [True, False]]
    layer = magnitude_masks({"a": a, "b": b}, 0.5, scope="layer")  # 2 of each
    assert layer["a"].tolist() == [[False, False], [True, True]]
    assert layer["b"].tolist() == [[False, True], [True, False]]
    # a weight masked before stays masked even where it is now large
    previous = {"a": torch.tensor([[True, True], [True, False]]), "b": torch.ones(2, 2).bool()}
    grown = magnitude_masks({"a": a, "b": b}, 0.25, previous=previous)
    assert grown["a"].tolist() == [[True, True], [True, False]]
    assert grown["b"].tolist() == [[True, True], [True, False]]  # 0.1, the smallest left


def test_gradual_pruning_reaches_the_schedule_and_its_masks_resume_bit_for_bit(tmp_path):
    common = [
        *TINY,
        "logger.mode=disabled",
        "trainer.eval_interval=10",
        "schedule.decay_iters=30",
        "sparsity.final=0.6",
        "sparsity.start=5",
        "sparsity.end=25",
        "sparsity.every=5",
        "sparsity.l1=1e-4",
    ]

    def run(name: str, *overrides: str) -> None:
        train(
            compose_train(*common, *overrides), RunInfo(dir=tmp_path / name, group=None, name=None)
        )

    run("straight", "trainer.max_iters=30")
    run("resumed", "trainer.max_iters=10")
    run("resumed", "trainer.max_iters=30", "resume=true")
    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert straight["sparsity"]["reached"] == pytest.approx(0.6)
    for name, mask in straight["sparsity"]["masks"].items():
        assert torch.equal(mask, resumed["sparsity"]["masks"][name])
    for name, weight in straight["model"].items():
        assert torch.equal(weight, resumed["model"][name]), name
    # the masked weights are zero: 60% of the prunable matrices
    model = GPT(GPTConfig(**straight["model_config"]))
    model.load_state_dict(straight["model"])
    zeros = sum(int((m.weight == 0).sum()) for m in prunable(model).values())
    assert zeros == sum(int((~m).sum()) for m in straight["sparsity"]["masks"].values())
    assert zeros / sum(m.weight.numel() for m in prunable(model).values()) == pytest.approx(
        0.6, abs=1e-3
    )


def test_the_penalties_are_their_formulas_and_stay_out_of_train_loss():
    model = small_gpt(bias=True)
    l1 = SparseTraining(sparsity_cfg(final=0.0, l1=0.5), model, 10).penalty()
    by_hand = 0.5 * sum(m.weight.abs().sum() for m in prunable(model).values())
    assert l1.item() == pytest.approx(by_hand.item(), rel=1e-6)
    # head 1 of block 0: its q, k, v rows and biases, its columns of c_proj (head size 8)
    attn = model.transformer.h[0].attn
    rows = [r + part * 32 for part in range(3) for r in range(8, 16)]
    head = (
        attn.c_attn.weight[rows].square().sum()
        + attn.c_attn.bias[rows].square().sum()
        + attn.c_proj.weight[:, 8:16].square().sum()
    ).sqrt()
    heads, neurons = group_norms(model)
    assert heads.shape == (2, 4) and neurons.shape == (2, 128)
    assert heads[0, 1].item() == pytest.approx(head.item(), rel=1e-5)
    mlp = model.transformer.h[1].mlp
    neuron = mlp.c_fc.weight[7].square().sum() + mlp.c_fc.bias[7] ** 2
    neuron = (neuron + mlp.c_proj.weight[:, 7].square().sum()).sqrt()
    assert neurons[1, 7].item() == pytest.approx(neuron.item(), rel=1e-5)
    group = SparseTraining(sparsity_cfg(final=0.0, group_lasso=2.0), model, 10).penalty()
    assert group.item() == pytest.approx(2.0 * (heads.sum() + neurons.sum()).item(), rel=1e-5)
    assert SparseTraining(sparsity_cfg(final=0.5), model, 10).penalty() is None


@pytest.mark.parametrize(
    "options",
    [{}, {"bias": True, "position": "rope", "qk_norm": True, "mlp": "relu2"}],
    ids=["default", "bias-rope-qknorm-relu2"],
)
def test_a_structurally_pruned_model_computes_what_the_masked_original_does(options):
    model = small_gpt(**options)
    x = torch.randint(50, (3, 16))
    kept = kept_groups(model, 0.5)  # 2 of 4 heads and 64 of 128 neurons in every block
    assert [(len(h), len(n)) for h, n in kept] == [(2, 64), (2, 64)]
    small = shrink(model, kept)
    masked = copy.deepcopy(model)
    mask_groups(masked, kept)
    assert small.config.n_head == 2 and small.config.head_dim == 8 and small.config.mlp_hidden == 64
    assert small.num_params() < model.num_params()
    torch.testing.assert_close(small(x), masked(x), rtol=0, atol=1e-5)
    # the heads kept are those of largest norm
    heads, _ = group_norms(model)
    assert set(kept[0][0].tolist()) == set(heads[0].topk(2).indices.tolist())
    with pytest.raises(ConfigError, match="would remove 4 of the 4 heads of every layer"):
        removed_counts(model.config, 0.9)


def test_int8_weights_follow_the_stated_rule_and_stay_close():
    model = small_gpt()
    c_fc = model.transformer.h[0].mlp.c_fc
    w = c_fc.weight.detach().clone()
    x = torch.randn(5, 32)
    # per output row: scale = max|w| / 127.5, q = round(w * (1 / scale)) in [-128, 127]
    scale = w.abs().amax(1, keepdim=True) / 127.5
    by_hand = x @ ((w * (1 / scale)).round().clamp(-128, 127) * scale).T
    int8_weights(model)
    assert c_fc.weight.qdata.dtype == torch.int8
    torch.testing.assert_close(c_fc(x), by_hand, rtol=1e-5, atol=1e-6)
    # a whole model: the logits within 2% of their spread (per-row int8: |dw| <= max|w| / 254)
    model = small_gpt()
    ids = torch.randint(50, (2, 16))
    float_logits = model(ids)
    int8_weights(model)
    assert (model(ids) - float_logits).abs().max() < 0.02 * float_logits.std()
    assert model.transformer.wte.weight.dtype == torch.float32  # the tied head stays float


def test_bad_sparsity_and_quantize_values_are_one_line_each():
    for override, message in [
        ("sparsity.final=1.0", r"sparsity.final=1.0 must be a fraction in \[0, 1\)"),
        ("sparsity.final=-0.1", "sparsity.final=-0.1 must be a fraction"),
        ("sparsity.scope=row", "sparsity.scope='row' must be one of global, layer"),
        ("sparsity.l1=-1", "sparsity.l1=-1 must be >= 0"),
    ]:
        with pytest.raises(ConfigError, match=message):
            check_config(compose_train(override))
    with pytest.raises(ConfigError, match="masks do not reach"):
        check_config(compose_train("sparsity.final=0.5", "optim=schedulefree_adamw"))
    with pytest.raises(ConfigError, match="the schedule cannot end before it starts"):
        check_config(compose_train("sparsity.final=0.5", "sparsity.start=500", "sparsity.end=400"))
    with pytest.raises(ConfigError, match="dtype=bfloat16 is not supported"):
        check_quantize("int8", "bfloat16")
    with pytest.raises(ConfigError, match="quantize='int4' must be null or int8"):
        check_quantize("int4")
    with pytest.raises(ConfigError, match="quantizes float32 weights; this model's are bfloat16"):
        int8_weights(small_gpt().to(torch.bfloat16))


def test_bytes_in_memory_and_on_disk():
    model = small_gpt()
    assert memory_bytes(model) == 4 * sum(p.numel() for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers()
    )
    dense = saved_bytes(model.state_dict())
    assert dense > memory_bytes(model)  # the values plus torch.save's own records
    with torch.no_grad():
        for m in prunable(model).values():
            m.weight.zero_()
    assert saved_bytes(csr_state(model)) < dense  # all-zero matrices store no values
    int8 = int8_weights(copy.deepcopy(small_gpt()))
    linear = sum(m.weight.numel() for m in prunable(model).values())
    rows = sum(m.weight.size(0) for m in prunable(model).values())
    # 1 byte per weight instead of 4, plus a float32 scale and an int8 zero point per row
    assert memory_bytes(model) - memory_bytes(int8) == 3 * linear - 5 * rows
