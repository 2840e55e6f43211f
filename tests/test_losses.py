"""Each loss against a naive reference, its gradients, the ignore index, and the registry."""

from pathlib import Path

import pytest
import torch
from conftest import compose_train
from omegaconf import OmegaConf
from torch.nn import functional as F

from nanolab import ConfigError
from nanolab.frequency import class_counts
from nanolab.losses import LOSSES, get_loss, uses_class_counts
from nanolab.metrics import TokenTotals
from nanolab.model import GPT, GPTConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "loss"


def loss_cfg(name: str, **params) -> OmegaConf:
    """The loss group as `loss=<name>` composes it (with its base's shared keys)."""
    cfg = compose_train(f"loss={name}").loss
    cfg.merge_with(params)
    return cfg


def batch(n: int = 37, c: int = 11, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(n, c, generator=g, dtype=torch.float64)).requires_grad_()
    return logits, torch.randint(c, (n,), generator=g)


def zipf(c: int) -> torch.Tensor:
    """Long-tailed training counts for c classes: 1000, 500, 333, ..."""
    return (1000 / torch.arange(1, c + 1, dtype=torch.float64)).floor()


def bound(cfg, c: int):
    """The loss as training gets it: a long-tail loss bound to counts of c classes."""
    return get_loss(cfg, zipf(c) if uses_class_counts(cfg) else None)


def naive_mse(logits, targets, k, M):
    """(1/C)[k (f_c - M)^2 + sum_{i != c} f_i^2] through an explicit scaled one-hot target."""
    one_hot = F.one_hot(targets, logits.size(1)).to(logits.dtype)
    weights = 1 + (k - 1) * one_hot
    return (weights * (logits - M * one_hot) ** 2).sum(1).mean() / logits.size(1)


@pytest.mark.parametrize("k,M", [(1.0, 1.0), (1.0, 15.0), (15.0, 30.0), (2.5, 0.5)])
def test_mse_matches_one_hot_formula_and_gradients(k, M):
    logits, targets = batch()
    ours = LOSSES["mse"](logits, targets, loss_cfg("mse", k=k, M=M))
    ref = naive_mse(logits, targets, k, M)
    torch.testing.assert_close(ours, ref.float(), rtol=1e-6, atol=1e-6)
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_ref,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-7)


def test_plain_mse_is_mean_squared_error_to_one_hot():
    logits, targets = batch()
    ours = LOSSES["mse"](logits, targets, loss_cfg("mse"))
    ref = F.mse_loss(logits.float(), F.one_hot(targets, logits.size(1)).float())
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_label_smoothing_matches_pytorch_and_formula(eps):
    logits, targets = batch()
    ours = LOSSES["label_smoothing"](logits, targets, loss_cfg("label_smoothing", epsilon=eps))
    torch.testing.assert_close(ours, F.cross_entropy(logits.float(), targets, label_smoothing=eps))
    logp = F.log_softmax(logits, dim=1)
    ref = -((1 - eps) * logp.gather(1, targets[:, None]).squeeze(1) + eps * logp.mean(1)).mean()
    torch.testing.assert_close(ours, ref.float(), rtol=1e-6, atol=1e-6)
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_ref,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-7)


def test_ce_matches_negative_log_softmax():
    logits, targets = batch()
    ours = LOSSES["ce"](logits, targets, loss_cfg("ce"))
    ref = -torch.log(torch.softmax(logits, 1)).gather(1, targets[:, None]).mean()
    torch.testing.assert_close(ours, ref.float(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_ignored_targets_contribute_nothing(name):
    logits, targets = batch()
    cfg = loss_cfg(name)
    masked = targets.clone()
    masked[::3] = cfg.ignore_index
    keep = masked != cfg.ignore_index
    loss_fn = bound(cfg, logits.size(1))
    with_ignored = loss_fn(logits, masked, cfg)
    torch.testing.assert_close(with_ignored, loss_fn(logits[keep], targets[keep], cfg))
    (grad,) = torch.autograd.grad(with_ignored, logits)
    assert grad[~keep].abs().max() == 0


def test_every_loss_has_a_yaml_and_every_yaml_a_loss():
    """Each registered loss has its yaml; a variant yaml (mse_rescaled: mse at other k, M) names a
    registered loss."""
    yamls = {p.stem for p in CONFIGS.glob("*.yaml")}
    assert set(LOSSES) <= yamls
    for name in yamls:
        assert loss_cfg(name).name in LOSSES, name
    for name in LOSSES:
        loss_fn = bound(loss_cfg(name), 11)
        assert getattr(loss_fn, "func", loss_fn) is LOSSES[name]


@pytest.mark.parametrize(
    "name,params,key",
    [
        ("mse", {"k": 0}, "loss.k"),
        ("mse", {"M": -1}, "loss.M"),
        ("label_smoothing", {"epsilon": 1.0}, "loss.epsilon"),
        ("focal", {"gamma": -1}, "loss.gamma"),
    ],
)
def test_bad_loss_parameters_name_the_key(name, params, key):
    with pytest.raises(ConfigError, match=key):
        get_loss(loss_cfg(name, **params))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_padded_vocabulary_never_reaches_losses_or_metrics(name):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=65, n_layer=1, n_head=2, n_embd=16))
    assert model.config.padded_vocab_size == 128
    x = torch.randint(65, (4, 16))
    y = torch.randint(65, (4, 16))
    cfg = loss_cfg(name)

    def loss_and_metrics():
        logits = model(x)
        totals = TokenTotals()
        loss_fn = bound(cfg, 65)
        totals.update(logits, y, loss_fn, cfg)
        return loss_fn(logits.reshape(-1, 65), y.reshape(-1), cfg), totals.compute()

    before = loss_and_metrics()
    with torch.no_grad():  # make the padded rows of the (tied) output layer enormous
        model.lm_head.weight[65:] = 1e4
    after = loss_and_metrics()
    assert model(x).shape == (4, 16, 65)
    torch.testing.assert_close(before[0], after[0])
    assert before[1] == after[1]


def _check_against(name: str, reference, **params) -> None:
    logits, targets = batch()
    ours = LOSSES[name](logits, targets, loss_cfg(name, **params))
    ref = reference(logits, targets)
    torch.testing.assert_close(ours, ref.float(), rtol=1e-6, atol=1e-6)
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_ref,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-7)


def test_squentropy_matches_its_definition():
    def reference(logits, targets):
        wrong = 1 - F.one_hot(targets, logits.size(1)).to(logits.dtype)
        return (
            F.cross_entropy(logits, targets)
            + ((wrong * logits**2).sum(1) / (logits.size(1) - 1)).mean()
        )

    _check_against("squentropy", reference)


def test_brier_matches_its_definition():
    _check_against(
        "brier",
        lambda z, y: ((z.softmax(1) - F.one_hot(y, z.size(1)).to(z.dtype)) ** 2).sum(1).mean(),
    )


@pytest.mark.parametrize("gamma", [0.0, 2.0, 3.5])
def test_focal_matches_its_definition(gamma):
    def reference(logits, targets):
        p_y = logits.softmax(1).gather(1, targets[:, None]).squeeze(1)
        return (-((1 - p_y) ** gamma) * p_y.log()).mean()

    _check_against("focal", reference, gamma=gamma)
    logits, targets = batch()
    if gamma == 0.0:
        torch.testing.assert_close(
            LOSSES["focal"](logits, targets, loss_cfg("focal", gamma=0.0)),
            LOSSES["ce"](logits, targets, loss_cfg("ce")),
        )


@pytest.mark.parametrize("name", ["ce", "mse"])
def test_z_loss_adds_the_squared_log_normaliser_to_any_loss(name):
    logits, targets = batch()
    cfg = loss_cfg(name, z_loss=1e-2)
    ref = LOSSES[name](logits, targets, cfg) + 1e-2 * (torch.logsumexp(logits, dim=1) ** 2).mean()
    ours = get_loss(cfg)(logits, targets, cfg)
    torch.testing.assert_close(ours, ref.float(), rtol=1e-6, atol=1e-6)
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_ref,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-7)
    assert get_loss(loss_cfg(name)) is LOSSES[name]  # off by default: the loss itself
    with pytest.raises(ConfigError, match="loss.z_loss"):
        get_loss(loss_cfg(name, z_loss=-1))


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("softcap", [None, 5.0])
def test_chunked_head_equals_the_whole_head_in_value_and_gradients(name, softcap):
    """The chunked head never holds all logits; its loss and gradients must be the same
    numbers, also when chunks are uneven or hold only ignored targets."""
    from nanolab.losses import chunked_head_loss

    cfg = loss_cfg(name, z_loss=1e-2)
    loss_fn = bound(cfg, 40)
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(150, 16, generator=g, dtype=torch.float64)
    weight = (0.5 * torch.randn(40, 16, generator=g, dtype=torch.float64)).requires_grad_()
    targets = torch.randint(40, (150,), generator=g)
    targets[64:128] = cfg.ignore_index  # the second chunk of 64 is all ignored
    targets[130] = cfg.ignore_index

    def head(h):
        logits = F.linear(h, weight)
        return logits if softcap is None else softcap * torch.tanh(logits / softcap)

    results = []
    for chunk in (None, 64):
        h = hidden.clone().requires_grad_()
        weight.grad = None
        if chunk is None:
            loss = loss_fn(head(h), targets, cfg)
        else:
            loss = chunked_head_loss(
                h,
                targets,
                head=head,
                head_params=[weight],
                loss_fn=loss_fn,
                cfg=cfg,
                chunk_tokens=chunk,
            )
        (2 * loss).backward()  # a scaled upstream gradient, as grad accumulation gives
        results.append((loss.detach(), h.grad, weight.grad.clone()))
        with torch.no_grad():
            if chunk is not None:
                assert torch.allclose(
                    chunked_head_loss(
                        hidden,
                        targets,
                        head=head,
                        head_params=[weight],
                        loss_fn=loss_fn,
                        cfg=cfg,
                        chunk_tokens=chunk,
                    ),
                    loss.detach(),
                    rtol=1e-6,
                )
    # Losses compute in float32, so chunking changes the order of float32 sums: 1e-5 relative.
    (whole_loss, whole_dh, whole_dw), (chunked_loss, chunked_dh, chunked_dw) = results
    assert torch.allclose(chunked_loss, whole_loss, rtol=1e-6)
    assert (chunked_dh - whole_dh).abs().max() <= 1e-5 * whole_dh.abs().max()
    assert (chunked_dw - whole_dw).abs().max() <= 1e-5 * whole_dw.abs().max()
    assert whole_dh[64:128].abs().max() == 0  # ignored tokens get no gradient either way


# --- the long-tail losses -------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,params",
    [
        ("logit_adjusted", {}),  # a uniform prior shifts every logit alike
        ("class_balanced", {}),  # equal counts weigh every class 1
        ("class_balanced", {"beta": 0.0}),
    ],
)
def test_long_tail_losses_with_equal_counts_are_cross_entropy(name, params):
    logits, targets = batch()
    ce = F.cross_entropy(logits, targets).float()
    loss = get_loss(loss_cfg(name, **params), torch.full((11,), 7.0, dtype=torch.float64))
    torch.testing.assert_close(loss(logits, targets, loss_cfg(name, **params)), ce)


@pytest.mark.parametrize(
    "name,params", [("logit_adjusted", {"tau": 0.0}), ("class_balanced", {"beta": 0.0})]
)
def test_long_tail_losses_switched_off_are_cross_entropy_whatever_the_counts(name, params):
    logits, targets = batch()
    cfg = loss_cfg(name, **params)
    torch.testing.assert_close(
        get_loss(cfg, zipf(11))(logits, targets, cfg), F.cross_entropy(logits, targets).float()
    )


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_logit_adjustment_value_and_gradient_by_hand(tau):
    """Menon et al.'s eq. 10 with the add-one prior; its gradient is
    (softmax(z + tau log pi) - onehot(y)) / N."""
    logits, targets = batch()
    counts = zipf(11)
    prior = (counts + 1) / (counts.sum() + 11)
    adjusted = logits + tau * prior.log()
    cfg = loss_cfg("logit_adjusted", tau=tau)
    ours = get_loss(cfg, counts)(logits, targets, cfg)
    p = adjusted.softmax(1)
    by_hand = -p.gather(1, targets[:, None]).log().mean()
    torch.testing.assert_close(ours, by_hand.float(), rtol=1e-6, atol=1e-6)
    (grad,) = torch.autograd.grad(ours, logits)
    expected = (p - F.one_hot(targets, 11)) / len(targets)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("beta", [0.9, 0.999])
def test_class_balanced_value_and_gradient_by_hand(beta):
    """Cui et al.'s weights (1 - beta)/(1 - beta^n), scaled to average 1 over the training
    targets; the gradient is w_y (softmax(z) - onehot(y)) / N."""
    logits, targets = batch()
    counts = zipf(11)
    weights = torch.tensor([(1 - beta) / (1 - beta ** float(n)) for n in counts])
    weights = weights / ((weights * counts).sum() / counts.sum())
    cfg = loss_cfg("class_balanced", beta=beta)
    ours = get_loss(cfg, counts)(logits, targets, cfg)
    p = logits.softmax(1)
    w_y = weights[targets].to(logits.dtype)
    by_hand = (w_y * -p.gather(1, targets[:, None]).squeeze(1).log()).mean()
    torch.testing.assert_close(ours, by_hand.float(), rtol=1e-6, atol=1e-6)
    (grad,) = torch.autograd.grad(ours, logits)
    expected = w_y[:, None] * (p - F.one_hot(targets, 11)) / len(targets)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-7)
    assert weights[-1] > weights[0]  # the rarest class weighs most


@pytest.mark.parametrize(
    "name,params,key",
    [("logit_adjusted", {"tau": -1}, "loss.tau"), ("class_balanced", {"beta": 1.0}, "loss.beta")],
)
def test_bad_long_tail_parameters_name_the_key(name, params, key):
    with pytest.raises(ConfigError, match=key):
        get_loss(loss_cfg(name, **params), zipf(11))


def test_a_class_counts_file_must_match_the_vocabulary(tmp_path):
    import numpy as np

    path = tmp_path / "prior.npy"
    np.save(path, np.ones(12))
    cfg = loss_cfg("logit_adjusted", class_counts=str(path))
    with pytest.raises(
        ConfigError,
        match=r"loss.class_counts=.*prior.npy holds an array of shape \(12,\).*11 tokens",
    ):
        class_counts(cfg.class_counts, np.ones(11, dtype=np.int64))
    np.save(path, np.arange(11))
    assert class_counts(cfg.class_counts, np.ones(11, dtype=np.int64)).tolist() == list(range(11))
    (tmp_path / "broken.npy").write_text("not an array")
    cfg.class_counts = str(tmp_path / "broken.npy")
    with pytest.raises(ConfigError, match="could not be read"):
        class_counts(cfg.class_counts, np.ones(11, dtype=np.int64))
    cfg.class_counts = str(tmp_path / "missing.npy")  # refused before any data is prepared
    with pytest.raises(ConfigError, match="missing.npy is not a file"):
        get_loss(cfg, zipf(11))
