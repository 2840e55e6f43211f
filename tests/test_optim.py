"""Optimizers and schedules: every optimizer of configs/optim/ learns and resumes exactly, Muon
gets matrices only, the extra's optimizers say what to install, and WSD has its exact values."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import REPO, compose_train
from omegaconf import OmegaConf

from nanolab import ConfigError
from nanolab.config import check_config
from nanolab.model import GPT, GPTConfig
from nanolab.optim import (
    NEEDS_EXTRA,
    StackedMuon,
    build_optimizer,
    build_schedule,
    muon_matrices,
    wsd_multiplier,
)

# the yamls that name an optimizer; a variant that only changes values (optim/muon_tuned.yaml,
# no name of its own) is composed by tests/test_instruments.py's experiment test
OPTIMIZERS = sorted(
    p.stem for p in (REPO / "configs" / "optim").glob("*.yaml") if "name" in OmegaConf.load(p)
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (conftest)


def test_the_optimizers_are_exactly_those_the_users_asked_for():
    assert OPTIMIZERS == sorted(
        [
            "sgd",
            "adam",
            "adamw",
            "adafactor",
            "muon",
            "lion",
            "shampoo",
            "soap",
            "schedulefree_adamw",
        ]
    )


def tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(
        GPTConfig(
            n_layer=2,
            n_head=2,
            n_embd=32,
            block_size=16,
            dropout=0.0,
            bias=True,
            logit_softcap=None,
            vocab_size=20,
        )
    )


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_two_hundred_steps_at_the_yaml_defaults_lower_the_loss(name):
    cfg = compose_train(f"optim={name}")
    model = tiny_model()
    optimizer = build_optimizer(model, cfg.optim, torch.device("cpu"))
    lr_at = build_schedule(OmegaConf.create({"name": "constant", "warmup_iters": 20}), cfg.optim.lr)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(20, (16, 16), generator=g)
    y = (x * 7 + 3) % 20  # a learnable map of the input token

    def loss() -> torch.Tensor:
        return torch.nn.functional.cross_entropy(model(x).reshape(-1, 20), y.reshape(-1))

    first = loss().item()
    for step in range(200):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step) * group.get("lr_scale", 1.0)
        if hasattr(optimizer, "train"):
            optimizer.train()
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    if hasattr(optimizer, "eval"):
        optimizer.eval()
    assert loss().item() < 0.5 * first, name


def test_muon_gets_the_block_matrices_and_adamw_everything_else():
    model = tiny_model()
    cfg = compose_train("optim=muon", "optim.lr=0.05", "optim.adamw_lr=0.004")
    optimizer = build_optimizer(model, cfg.optim, torch.device("cpu"))
    muon, adamw = optimizer.optimizers
    assert isinstance(muon, StackedMuon) and isinstance(adamw, torch.optim.AdamW)
    muon_params = [p for g in muon.param_groups for p in g["params"]]
    assert muon_params and all(p.dim() == 2 for p in muon_params)
    assert {id(p) for p in muon_params} == {id(p) for p in muon_matrices(model)}
    adamw_params = [p for g in adamw.param_groups for p in g["params"]]
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in adamw_params} >= {
        "transformer.wte.weight",
        "transformer.wpe.weight",
        "transformer.ln_f.weight",
    }
    # each once
    assert sorted(map(id, muon_params + adamw_params)) == sorted(id(p) for p in model.parameters())
    assert all(g["lr_scale"] == pytest.approx(0.08) for g in adamw.param_groups)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"nesterov": False, "weight_decay": 0.1, "adjust_lr_fn": "match_rms_adamw"},
    ],
)
def test_stacked_muon_takes_torchs_muon_steps(options):
    """Newton-Schulz on a stack of same-shaped matrices is torch.optim.Muon's per-matrix loop:
    the same weights after several steps (exactly, on this CPU) and the same state."""
    shapes = [(48, 16), (16, 16), (64, 16), (16, 64)] * 2 + [(5, 7)]
    torch.manual_seed(0)
    start = [torch.randn(s) * 0.1 for s in shapes]
    grads = [[torch.randn(s) for s in shapes] for _ in range(4)]
    runs = []
    for cls in (torch.optim.Muon, StackedMuon):
        params = [torch.nn.Parameter(w.clone()) for w in start]
        optimizer = cls(params, lr=0.02, ns_steps=5, **options)
        for step_grads in grads:
            for p, g in zip(params, step_grads, strict=True):
                p.grad = g.clone()
            optimizer.step()
        runs.append((params, optimizer))
    (torch_params, torch_muon), (params, stacked) = runs
    for mine, theirs, first in zip(params, torch_params, start, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)
        assert not torch.equal(mine, first)  # it did move them
    loaded = torch.optim.Muon(torch_params, lr=0.02)
    loaded.load_state_dict(stacked.state_dict())  # the state moves between the two
    for p, q in zip(params, torch_params, strict=True):
        torch.testing.assert_close(
            stacked.state[p]["momentum_buffer"], torch_muon.state[q]["momentum_buffer"]
        )


def test_an_optimizer_of_the_extra_without_the_package_is_one_line_naming_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "pytorch_optimizer" else real(name, *a),
    )
    for name in NEEDS_EXTRA:
        with pytest.raises(ConfigError, match=r"nanolab\[optimizers\]"):
            check_config(compose_train(f"optim={name}"))
    check_config(compose_train("optim=muon"))  # built into torch: no extra needed


def test_wsd_has_its_exact_values():
    w, n = 10, 100
    for shape in ("linear", "cosine", "1-sqrt"):
        m = [wsd_multiplier(step, w, n, 0.2, shape, 0.1) for step in range(n + 1)]
        assert m[0] == pytest.approx(1 / w)
        assert m[w - 1] == 1.0 and all(v == 1.0 for v in m[w:80])  # flat through the stable phase
        assert m[n] == pytest.approx(0.1)
        assert all(a >= b for a, b in zip(m[w - 1 :], m[w:]))  # non-increasing after warmup
    assert wsd_multiplier(90, w, n, 0.2, "linear", 0.0) == pytest.approx(0.5)
    assert wsd_multiplier(90, w, n, 0.2, "cosine", 0.0) == pytest.approx(0.5)
    assert wsd_multiplier(85, w, n, 0.2, "1-sqrt", 0.0) == pytest.approx(0.5)


def test_wsd_from_its_yaml_and_its_bad_values():
    cfg = compose_train("schedule=wsd", "trainer.max_iters=1000", "optim.lr=0.01")
    lr_at = build_schedule(cfg.schedule, cfg.optim.lr)
    assert lr_at(0) == pytest.approx(0.01 / 100) and lr_at(500) == 0.01 and lr_at(1000) == 0.0
    for key, value in (("decay_frac", 1.5), ("final_frac", -0.1), ("decay_shape", "sqrt")):
        with pytest.raises(ConfigError, match=f"schedule.{key}"):
            check_config(compose_train("schedule=wsd", f"schedule.{key}={value}"))
