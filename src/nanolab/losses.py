"""Training losses: each is one function registered by name, plus configs/loss/<name>.yaml.

A loss takes logits over the true vocabulary (N, C), integer targets (N,) and its own config
(the `loss` group), and returns the mean over targets that are not `loss.ignore_index`.
Losses are computed in float32 whatever the autocast dtype of the logits.

Adding a loss: write a function here with `@register("name")` (and a `check` for its
parameters if it has any), and add configs/loss/name.yaml with `name: name` and its keys. A
loss that depends on how often each class is a training target (the long-tail losses) also
registers `stat`, which turns the training split's counts per class into the tensor it reads
(a log prior, class weights): get_loss binds it once, so the loss keeps the common signature.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn import functional as F

from nanolab import ConfigError

LossFn = Callable[[torch.Tensor, torch.Tensor, DictConfig], torch.Tensor]
Stat = Callable[[torch.Tensor, DictConfig], torch.Tensor]
LOSSES: dict[str, LossFn] = {}
_CHECKS: dict[str, Callable[[DictConfig], None]] = {}
_STATS: dict[str, Stat] = {}


def register(
    name: str, check: Callable[[DictConfig], None] | None = None, stat: Stat | None = None
) -> Callable[[LossFn], LossFn]:
    """Register a loss under `name`; `check` validates its config and raises ConfigError;
    `stat(counts, cfg)` makes the tensor the loss takes as its `stat` keyword from the training
    split's counts per class (float64, one per class of the vocabulary)."""

    def decorator(fn: LossFn) -> LossFn:
        LOSSES[name] = fn
        if check is not None:
            _CHECKS[name] = check
        if stat is not None:
            _STATS[name] = stat
        return fn

    return decorator


def check_loss(cfg: DictConfig) -> None:
    """ConfigError unless `loss.name` is registered and its parameters are valid."""
    if cfg.name not in LOSSES:
        raise ConfigError(
            f"loss.name={cfg.name!r} is not a registered loss; choose one of {sorted(LOSSES)}"
        )
    if cfg.name in _CHECKS:
        _CHECKS[cfg.name](cfg)
    if cfg.z_loss < 0:
        raise ConfigError(f"loss.z_loss={cfg.z_loss} must be >= 0 (0 turns it off; PaLM used 1e-4)")


def uses_class_counts(cfg: DictConfig) -> bool:
    """Whether the loss reads the training split's counts per class."""
    return cfg.name in _STATS


def get_loss(cfg: DictConfig, class_counts: torch.Tensor | None = None) -> LossFn:
    """The registered loss named by `loss.name`, after checking its parameters, bound to its
    statistic of `class_counts` (the training counts per class, on the logits' device) when it
    has one; with `loss.z_loss` > 0 the z-loss term is added to it."""
    check_loss(cfg)
    base = LOSSES[cfg.name]
    if cfg.name in _STATS:
        if class_counts is None:
            raise ConfigError(
                f"loss={cfg.name} weighs classes by their training counts, and none were given"
            )
        base = functools.partial(base, stat=_STATS[cfg.name](class_counts.double(), cfg))
    if cfg.z_loss == 0:
        return base

    def with_z_loss(logits: torch.Tensor, targets: torch.Tensor, cfg: DictConfig) -> torch.Tensor:
        return base(logits, targets, cfg) + cfg.z_loss * z_loss(logits, targets, cfg)

    return with_z_loss


def z_loss(logits: torch.Tensor, targets: torch.Tensor, cfg: DictConfig) -> torch.Tensor:
    """(log Z)^2 with Z = sum_c exp(f_c) (PaLM, Chowdhery et al. 2022): keeps the softmax
    normaliser near 1 so logits cannot drift; added to any loss with weight `loss.z_loss`."""
    return _masked_mean(torch.logsumexp(logits.float(), dim=1).square(), targets, cfg.ignore_index)


def _masked_mean(per_token: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
    keep = targets != ignore_index
    return (per_token * keep).sum() / keep.sum().clamp(min=1)


@register("ce")
def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, cfg: DictConfig) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets, ignore_index=cfg.ignore_index)


def _check_label_smoothing(cfg: DictConfig) -> None:
    if not 0.0 <= cfg.epsilon < 1.0:
        raise ConfigError(f"loss.epsilon={cfg.epsilon} must lie in [0, 1)")


@register("label_smoothing", check=_check_label_smoothing)
def label_smoothing(logits: torch.Tensor, targets: torch.Tensor, cfg: DictConfig) -> torch.Tensor:
    """Cross-entropy against (1-eps)*one_hot + eps/C: PyTorch's semantics."""
    return F.cross_entropy(
        logits.float(), targets, ignore_index=cfg.ignore_index, label_smoothing=cfg.epsilon
    )


def _check_mse(cfg: DictConfig) -> None:
    for key in ("k", "M"):
        if not cfg[key] > 0:
            raise ConfigError(f"loss.{key}={cfg[key]} must be > 0")


@register("mse", check=_check_mse)
def mse(logits: torch.Tensor, targets: torch.Tensor, cfg: DictConfig) -> torch.Tensor:
    """Square loss on raw logits with Hui & Belkin's rescaling (ICLR 2021, arXiv 2006.07322).

    Per token, for true class c among C classes:
        (1/C) * [k * (f_c - M)^2 + sum_{i != c} f_i^2]
      = (1/C) * [sum_i f_i^2 + (k - 1) f_c^2 - 2kM f_c + kM^2]
    The expanded form needs no one-hot tensor, which at a 50k vocabulary would be as large
    as the logits themselves. k = M = 1 is plain MSE against a one-hot target.
    """
    f = logits.float()
    k, M = float(cfg.k), float(cfg.M)
    f_c = f.gather(1, targets.clamp(min=0).unsqueeze(1)).squeeze(1)
    per_token = (
        f.square().sum(dim=1) + (k - 1) * f_c.square() - 2 * k * M * f_c + k * M * M
    ) / f.size(1)
    return _masked_mean(per_token, targets, cfg.ignore_index)


@register("squentropy")
def squentropy(logits: torch.Tensor, targets: torch.Tensor, cfg: DictConfig) -> torch.Tensor:
    """Cross-entropy plus the mean square of the wrong-class logits (Hui, Belkin & Wright,
    ICML 2023, arXiv 2302.03952): CE + (1/(C-1)) * sum_{j != y} f_j^2."""
    f = logits.float()
    ce = F.cross_entropy(f, targets.clamp(min=0), reduction="none")
    f_y = f.gather(1, targets.clamp(min=0).unsqueeze(1)).squeeze(1)
    wrong_squares = (f.square().sum(dim=1) - f_y.square()) / (f.size(1) - 1)
    return _masked_mean(ce + wrong_squares, targets, cfg.ignore_index)


@register("brier")
def brier(logits: torch.Tensor, targets: torch.Tensor, cfg: DictConfig) -> torch.Tensor:
    """Brier score on softmax probabilities, sum_c (p_c - y_c)^2 = sum_c p_c^2 - 2 p_y + 1."""
    p = logits.float().softmax(dim=1)
    p_y = p.gather(1, targets.clamp(min=0).unsqueeze(1)).squeeze(1)
    return _masked_mean(p.square().sum(dim=1) - 2 * p_y + 1, targets, cfg.ignore_index)


def _check_focal(cfg: DictConfig) -> None:
    if cfg.gamma < 0:
        raise ConfigError(f"loss.gamma={cfg.gamma} must be >= 0 (0 is cross-entropy)")


@register("focal", check=_check_focal)
def focal(logits: torch.Tensor, targets: torch.Tensor, cfg: DictConfig) -> torch.Tensor:
    """Focal loss (Lin et al., ICCV 2017): -(1 - p_y)^gamma * log p_y; gamma = 0 is
    cross-entropy."""
    log_p_y = -F.cross_entropy(logits.float(), targets.clamp(min=0), reduction="none")
    return _masked_mean(-((1 - log_p_y.exp()) ** cfg.gamma) * log_p_y, targets, cfg.ignore_index)


# --- losses for a long tail of rare classes (docs/long_tail.md) ----------------------------


def _check_counts_file(cfg: DictConfig) -> None:
    path = cfg.class_counts
    if path is not None and not Path(path).is_file():
        raise ConfigError(
            f"loss.class_counts={path} is not a file; give a .npy file of one count per "
            "vocabulary token, or null for the training split's counts"
        )


def _check_logit_adjusted(cfg: DictConfig) -> None:
    _check_counts_file(cfg)
    if cfg.tau < 0:
        raise ConfigError(
            f"loss.tau={cfg.tau} must be >= 0 (0 is cross-entropy; Menon et al. use 1)"
        )


def _log_prior(counts: torch.Tensor, cfg: DictConfig) -> torch.Tensor:
    """tau * log pi, pi the class prior of the training targets, add-one smoothed so that a
    class never seen in training has a finite logit offset (a val target may be one)."""
    prior = (counts + 1) / (counts.sum() + len(counts))
    return (cfg.tau * prior.log()).float()


@register("logit_adjusted", check=_check_logit_adjusted, stat=_log_prior)
def logit_adjusted(
    logits: torch.Tensor, targets: torch.Tensor, cfg: DictConfig, *, stat: torch.Tensor
) -> torch.Tensor:
    """Logit-adjusted cross-entropy (Menon et al., ICLR 2021, arXiv 2007.07314, eq. 10):
    cross-entropy of softmax(f + tau * log pi) during training, the raw logits f at prediction,
    so the model learns the balanced (prior-free) scores. With a uniform prior it is ce."""
    return F.cross_entropy(logits.float() + stat, targets, ignore_index=cfg.ignore_index)


def _check_class_balanced(cfg: DictConfig) -> None:
    _check_counts_file(cfg)
    if not 0 <= cfg.beta < 1:
        raise ConfigError(
            f"loss.beta={cfg.beta} must lie in [0, 1) (0 is cross-entropy; Cui et al. "
            "use 0.9-0.9999)"
        )


def _class_weights(counts: torch.Tensor, cfg: DictConfig) -> torch.Tensor:
    """Cui et al.'s weights (1 - beta) / (1 - beta^n_c), the inverse effective number of
    samples, normalised so that their mean over the training targets is 1: the loss then has
    cross-entropy's scale on the training distribution and shares its learning rate. (Cui et
    al. normalise to a sum of C over the classes; at 50,257 classes, most never seen, that
    would shrink every seen class's weight.) A class never seen weighs as one seen once."""
    n = counts.clamp(min=1)
    weights = (1 - cfg.beta) / (1 - cfg.beta**n)
    total = counts.sum()
    mean = (weights * counts).sum() / total if total > 0 else weights.mean()
    return (weights / mean).float()


@register("class_balanced", check=_check_class_balanced, stat=_class_weights)
def class_balanced(
    logits: torch.Tensor, targets: torch.Tensor, cfg: DictConfig, *, stat: torch.Tensor
) -> torch.Tensor:
    """Class-balanced cross-entropy (Cui et al., CVPR 2019, arXiv 1901.05555): each token's
    cross-entropy times its class's weight, averaged over tokens. Equal counts give ce."""
    safe = targets.clamp(min=0)
    ce = F.cross_entropy(logits.float(), safe, reduction="none")
    return _masked_mean(stat[safe] * ce, targets, cfg.ignore_index)


class _ChunkedHeadLoss(torch.autograd.Function):
    """The loss of head(hidden) computed chunk by chunk of tokens, with each chunk's gradients
    taken at once in the forward pass (as Liger Kernel's fused linear cross-entropy does), so
    the logits of one chunk exist at a time and nothing is recomputed in the backward pass."""

    @staticmethod
    # noqa: ANN001 (autograd API)
    def forward(ctx, hidden, targets, chunk_loss, ignore_index, chunk_tokens, grad_scale, *params):
        total = torch.zeros((), device=hidden.device)
        grad_hidden = torch.zeros_like(hidden)
        grad_params = [torch.zeros_like(p) for p in params]
        for rows, share in _chunks(targets, ignore_index, chunk_tokens):
            h = hidden[rows].detach().requires_grad_()
            with torch.enable_grad():
                loss = chunk_loss(h, targets[rows]) * share
                scaled = loss if grad_scale is None else loss * grad_scale
            grads = torch.autograd.grad(scaled, [h, *params])
            # differentiated scaled (the float16 backward), kept unscaled
            if grad_scale is not None:
                grads = [g / grad_scale for g in grads]
            grad_hidden[rows] = grads[0]
            for acc, g in zip(grad_params, grads[1:]):
                acc += g
            total += loss.detach()
        ctx.save_for_backward(grad_hidden, *grad_params)
        return total

    @staticmethod
    def backward(ctx, grad_output):  # noqa: ANN001 (autograd API)
        grad_hidden, *grad_params = ctx.saved_tensors
        return (
            grad_hidden * grad_output,
            None,
            None,
            None,
            None,
            None,
            *(g * grad_output for g in grad_params),
        )


def _chunks(
    targets: torch.Tensor, ignore_index: int | None, chunk_tokens: int
) -> list[tuple[slice, float]]:
    """(rows, share) of each chunk holding counted tokens, share being its fraction of them: a
    chunk's mean times its share is its part of the batch's mean. Chunks of ignored tokens only
    are left out (their mean is 0/0). One device sync reads the counts, unless ignore_index is
    None: the caller knows that every token counts."""
    if ignore_index is None:
        counts = [len(t) for t in targets.split(chunk_tokens)]
    else:
        counts = torch.stack(
            [(c != ignore_index).sum() for c in targets.split(chunk_tokens)]
        ).tolist()
    total = sum(counts)
    return [
        (slice(i * chunk_tokens, (i + 1) * chunk_tokens), n / total)
        for i, n in enumerate(counts)
        if n > 0
    ]


# Below this vocabulary size the logits are small next to the activations and one piece is fastest.
CHUNKED_HEAD_MIN_VOCAB = 8192
AUTO_HEAD_CHUNK_TOKENS = 1024


def head_chunk_tokens(setting: int | str, vocab_size: int) -> int:
    """The `head_chunk_tokens` config resolved: tokens per chunk of the output head and loss,
    0 for the whole batch at once; `auto` chunks at vocabularies of 8192 tokens or more."""
    if setting == "auto":
        return AUTO_HEAD_CHUNK_TOKENS if vocab_size >= CHUNKED_HEAD_MIN_VOCAB else 0
    if not isinstance(setting, int) or isinstance(setting, bool) or setting < 0:
        raise ConfigError(
            f"head_chunk_tokens={setting!r} must be auto, "
            "0 (no chunks) or a number of tokens per chunk"
        )
    return setting


def head_loss(
    head: Callable[[torch.Tensor], torch.Tensor],
    loss_fn: LossFn,
    cfg: DictConfig,
    compile: bool = False,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(hidden, targets) -> the loss of head(hidden): what the chunked head computes per chunk.
    Compiled, it fuses the head's matmul output, the float32 upcast and the loss (and their
    backward) instead of making several passes over a chunk's logits; it then takes the loss's
    parameters as plain values, since compiled code would guard on a DictConfig's internals."""
    if not compile:
        return lambda h, t: loss_fn(head(h), t, cfg)
    params = SimpleNamespace(**OmegaConf.to_container(cfg, resolve=True))
    return torch.compile(lambda h, t: loss_fn(head(h), t, params))


def chunked_head_loss(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    *,
    head: Callable[[torch.Tensor], torch.Tensor],
    head_params: list[torch.Tensor],
    loss_fn: LossFn,
    cfg: DictConfig,
    chunk_tokens: int,
    grad_scale: torch.Tensor | None = None,
    chunk_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    all_counted: bool = False,
) -> torch.Tensor:
    """loss_fn(head(hidden), targets, cfg) without ever holding the logits of all tokens: at a
    50k vocabulary those, and every loss's temporaries of the same size, dominate memory.

    hidden is (N, d), targets (N,); head maps (n, d) hidden states to (n, C) logits using
    head_params. The value and the gradients equal the unchunked loss's for any loss that is a
    mean over counted tokens, which every registered loss is. The gradients are taken in the
    forward pass, before any loss scaling the caller applies: under float16 autocast pass the
    GradScaler's scale as `grad_scale` so that they are taken scaled, as they would be in one
    piece (per-logit gradients of about 1/(V·N) underflow in float16 otherwise). `chunk_loss`,
    head_loss(head, loss_fn, cfg) by default, may be its compiled form. With `all_counted`
    (no target can equal ignore_index, as in training batches of token ids) the chunks' shares
    are known without reading the targets back from the device."""
    chunk_loss = chunk_loss or head_loss(head, loss_fn, cfg)
    ignore_index = None if all_counted else cfg.ignore_index
    if not torch.is_grad_enabled():
        total = torch.zeros((), device=hidden.device)
        for rows, share in _chunks(targets, ignore_index, chunk_tokens):
            total += chunk_loss(hidden[rows], targets[rows]) * share
        return total
    return _ChunkedHeadLoss.apply(
        hidden, targets, chunk_loss, ignore_index, chunk_tokens, grad_scale, *head_params
    )
