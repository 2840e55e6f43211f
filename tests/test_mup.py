"""μP: equal to SP bit for bit at the base shape, its init, multipliers and per-group rules at
other widths, tied embeddings scaled once, the refusals, weights across parametrizations, and
the coordinate check (μP passes, SP and μP without lr/m fail)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import SHAKESPEARE_COPIES, compose_train
from omegaconf import OmegaConf

from nanolab import ConfigError
from nanolab.config import check_config
from nanolab.coord_check import coordinate_check, slopes, worst_slope
from nanolab.model import GPT, GPTConfig
from nanolab.optim import build_optimizer
from nanolab.weights import Weights, load_into

ADAMW = OmegaConf.create(
    dict(name="adamw", lr=1e-3, weight_decay=0.1, betas=[0.9, 0.99], eps=1e-8, fused=False)
)
SGD = OmegaConf.create(dict(name="sgd", lr=0.1, weight_decay=0.01, momentum=0.9, nesterov=False))


def gpt(width: int = 64, seed: int = 0, **options) -> GPT:
    torch.manual_seed(seed)
    shape = dict(n_layer=2, n_head=width // 16, n_embd=width, vocab_size=65, block_size=16)
    return GPT(GPTConfig(**shape | options))


def per_parameter(optimizer) -> dict[int, tuple[float, float]]:
    """Each parameter's (lr multiplier, weight decay), whatever groups hold it."""
    return {
        id(p): (group.get("lr_scale", 1.0), group["weight_decay"])
        for group in optimizer.param_groups
        for p in group["params"]
    }


@pytest.mark.parametrize("tie", [True, False])
def test_mup_at_the_base_shape_is_sp_bit_for_bit(tie):
    sp = gpt(tie_embeddings=tie)
    mup = gpt(tie_embeddings=tie, parametrization="mup", mup_base_width=64, mup_base_head_dim=16)
    for (name, a), (_, b) in zip(sp.state_dict().items(), mup.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    x = torch.randint(0, 65, (2, 16))
    assert torch.equal(sp(x), mup(x))
    for cfg in (ADAMW, SGD):
        a, b = (
            build_optimizer(sp, cfg, torch.device("cpu")),
            build_optimizer(mup, cfg, torch.device("cpu")),
        )
        by_name_sp, by_name_mup = per_parameter(a), per_parameter(b)
        for (name, p), q in zip(sp.named_parameters(), mup.parameters(), strict=True):
            assert by_name_sp[id(p)] == by_name_mup[id(q)], (cfg.name, name)
    # one AdamW step moves both alike, to the last bit
    for model in (sp, mup):
        optimizer = build_optimizer(model, ADAMW, torch.device("cpu"))
        model(x).square().mean().backward()
        optimizer.step()
    for a, b in zip(sp.parameters(), mup.parameters(), strict=True):
        assert torch.equal(a, b)


def test_mup_init_multipliers_and_adam_and_sgd_rules_at_width_multiplier_4():
    base, wide = gpt(64), gpt(256, parametrization="mup", mup_base_width=64, mup_base_head_dim=16)
    assert wide.config.width_mult == 4.0
    hidden_std = wide.transformer.h[0].attn.c_attn.weight.std().item()
    assert hidden_std == pytest.approx(0.02 / 2, rel=0.05)  # sigma / sqrt(m)
    mlp_proj = wide.transformer.h[0].mlp.c_proj.weight.std().item()
    assert mlp_proj == pytest.approx(0.02 / math.sqrt(4) / math.sqrt(2 * 2), rel=0.05)
    # embeddings, and the tied head with them, keep sigma: scaled once, not again as a readout
    assert wide.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert wide.lm_head.weight is wide.transformer.wte.weight
    # readout multiplier 1/m: the logits are the head over hidden / 4
    hidden = torch.randn(2, 3, 256)
    expected = (hidden / 4) @ wide.lm_head.weight.T
    assert torch.allclose(wide.head(hidden), expected[..., :65], atol=1e-6)
    # 1/d attention, equal to SP at the base head size
    assert gpt(64, parametrization="mup", mup_base_width=64).config.attn_scale is None
    wide_heads = GPTConfig(
        n_layer=1, n_head=2, n_embd=128, vocab_size=65, parametrization="mup",
        mup_base_width=64, mup_base_head_dim=16,
    )  # fmt: skip
    assert wide_heads.attn_scale == pytest.approx(4 / 64)  # sqrt(16) / 64
    assert base.config.attn_scale is None
    # AdamW: hidden matrices at lr/4 with decay x4 (lr x decay kept); the rest as SP
    adam = per_parameter(build_optimizer(wide, ADAMW, torch.device("cpu")))
    assert adam[id(wide.transformer.h[1].mlp.c_fc.weight)] == (0.25, 0.4)
    assert adam[id(wide.transformer.wte.weight)] == (1.0, 0.1)
    assert adam[id(wide.transformer.h[0].ln_1.weight)] == (1.0, 0.0)
    # SGD (MuSGD): vector-like at lr x 4 and decay / 4, hidden matrices as SP
    sgd = per_parameter(build_optimizer(wide, SGD, torch.device("cpu")))
    assert sgd[id(wide.transformer.h[1].mlp.c_fc.weight)] == (1.0, 0.01)
    assert sgd[id(wide.transformer.wte.weight)] == (4.0, 0.0025)
    assert sgd[id(wide.transformer.h[0].ln_1.weight)] == (4.0, 0.0)


def test_completep_scales_branches_and_keeps_the_base_depths_init():
    deep = gpt(64, n_layer=8, depth_alpha=1.0, mup_base_depth=2)
    assert deep.config.branch_mult == pytest.approx(0.25)
    proj = torch.cat([b.attn.c_proj.weight.flatten() for b in deep.transformer.h])
    assert proj.std().item() == pytest.approx(0.02 / math.sqrt(2 * 2), rel=0.05)
    # at the base depth the branches are as SP's, bit for bit
    assert torch.equal(
        gpt(64, depth_alpha=1.0, mup_base_depth=2)(torch.arange(8)[None]),
        gpt(64)(torch.arange(8)[None]),
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.parametrization=mup", "optim=lion"], "has no rule for optim=lion"),
        (["model.parametrization=mup", "optim=adafactor"], "has no rule for optim=adafactor"),
        (
            ["model.parametrization=mup", "optim=muon", "optim.adjust_lr_fn=match_rms_adamw"],
            "grows Muon's lr",
        ),
        (["model.parametrization=mup", "model.mup_base_width=40"], "multiple of the base head"),
        (["model.parametrization=mup", "model.mup_base_width=0"], "must be > 0"),
        (["model.parametrization=mupp"], "must be one of sp, mup"),
        (["model.depth_alpha=0.3"], "must be 0 \\(off\\) or in \\[0.5, 1\\]"),
        (["model.parametrization=mup", "model.depth_alpha=1", "optim=sgd"], "AdamW and Muon only"),
        (["model.init_std=0"], "init_std=0"),
    ],
)
def test_bad_parametrization_values_are_one_line_each(overrides, message):
    with pytest.raises(ConfigError, match=message) as error:
        check_config(compose_train(*overrides))
    assert "\n" not in str(error.value)


def test_sp_weights_into_a_wider_mup_model_are_refused_and_mup_weights_reload():
    def weights_of(model: GPT, **config) -> Weights:
        return Weights(
            source="ckpt.pt",
            path=Path("ckpt.pt"),
            state_dict=model.state_dict(),
            config={k: v for k, v in model.config.to_dict().items() if k != "vocab_size"} | config,
            tokenizer="char",
            chars=None,
        )

    meta = {"tokenizer": "char", "vocab_size": 65}
    mup = dict(parametrization="mup", mup_base_width=64, mup_base_head_dim=16)
    sp_wide = gpt(256)
    # a foreign file (no parametrization keys): the defaults, SP
    foreign = weights_of(sp_wide)
    for key in ("parametrization", "mup_base_width", "mup_base_head_dim"):
        foreign.config.pop(key)
    with pytest.raises(ConfigError, match="trained with parametrization=sp .width multiplier 1"):
        load_into(gpt(256, seed=1, **mup), foreign, meta)
    # a μP checkpoint loads into the same μP model as it is: the same function
    trained = gpt(256, **mup)
    fresh = gpt(256, seed=1, **mup)
    load_into(fresh, weights_of(trained), meta)
    x = torch.randint(0, 65, (1, 16))
    assert torch.equal(fresh(x), trained(x))
    # at m = 1 SP weights fit μP (the same function)
    load_into(gpt(64, **mup), weights_of(gpt(64)), meta)


def char_batch(batch: int = 16, block: int = 64) -> tuple[torch.Tensor, torch.Tensor, int]:
    text = next(p for p in SHAKESPEARE_COPIES if p.is_file()).read_text()[:200_000]
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text[:50_000]])
    starts = torch.arange(batch) * 3001
    windows = torch.stack([data[s : s + block + 1] for s in starts])
    return windows[:, :-1], windows[:, 1:], len(chars)


def test_the_coordinate_check_passes_mup_and_catches_sp_and_mup_without_lr_over_m():
    """Widths 64-512 at lr 1e-3 (docs/choosing_size.md: from width 32, 2 heads, finite-width
    terms alone move some slopes past 0.15)."""
    x, y, vocab = char_batch(block=32)
    optim = OmegaConf.merge(ADAMW, {"lr": 0.001, "weight_decay": 0.0})
    mup = slopes(
        coordinate_check(
            x, y, vocab, widths=[64, 128, 256, 512], parametrizations=["mup"], optim=optim,
            steps=5, seeds=(0, 1),
        )
    )  # fmt: skip
    assert abs(worst_slope(mup, "mup")) <= 0.15
    # the failures show at smaller widths already
    fitted = slopes(
        coordinate_check(
            x, y, vocab, widths=[64, 128, 256], parametrizations=["sp", "mup_sp_lr"],
            optim=optim, steps=5, seeds=(0,),
        )
    )  # fmt: skip
    sp_by_step5 = max(s for (p, _, step, _), s in fitted.items() if p == "sp" and step <= 5)
    assert sp_by_step5 >= 0.5
    assert abs(worst_slope(fitted, "mup_sp_lr")) > 0.15  # the control fails, so the test can


def test_coord_check_writes_its_figure_and_tables(tmp_path: Path):
    from nanolab.coord_check import plot, write_csv

    x, y, vocab = char_batch(batch=4, block=16)
    records = coordinate_check(
        x, y, vocab, widths=[32, 64], parametrizations=["sp", "mup"], optim=ADAMW, steps=2,
        seeds=(0,),
    )  # fmt: skip
    fitted = slopes(records)
    write_csv(records, fitted, tmp_path)
    plot(records, fitted, tmp_path / "coord_check.png")
    rows = (tmp_path / "coord_check.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 2 * 2 * 8  # parametrizations x widths x steps x modules
    assert (tmp_path / "coord_check.png").stat().st_size > 10_000
    assert "mup,change,2,logits" in (tmp_path / "coord_check_slopes.csv").read_text()
