"""GPT-2 language model in the style of nanoGPT: one file, one module per concept.

The vocabulary is padded up to a multiple of 64 so the output matmul hits fast kernels; the
model only ever returns logits over the true vocabulary, so padded columns cannot reach a
loss, a metric or a sampled token.

The defaults are GPT-2's architecture. The options are the changes modded-nanogpt and nanochat
made, each one key: rotary positions, QK-norm, the ReLU² MLP, RMSNorm, no biases, an untied
output head, zero-initialised output projections and a logit soft-cap.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
from torch.nn import functional as F

from nanolab import ConfigError

VOCAB_MULTIPLE = 64


@dataclass(kw_only=True)
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2; False is a bit faster
    # logits become c * tanh(logits / c), as in Gemma 2 / modded-nanogpt
    logit_softcap: float | None = None
    # learned: GPT-2's position embedding | rope: rotary embeddings of q and k (Su et al. 2021)
    position: str = "learned"
    rope_base: float = 10000.0  # rotary frequencies base^(-2i/head_dim)
    # RMS-normalise each head's q and k before attention (nanochat, modded-nanogpt)
    qk_norm: bool = False
    mlp: str = "gelu"  # gelu (GPT-2) | relu2: ReLU(x)^2 (Primer, So et al. 2021; modded-nanogpt)
    # exact: x·Φ(x) (nanoGPT) | tanh: the tanh approximation GPT-2's weights were trained with
    gelu: str = "exact"
    norm: str = "layernorm"  # layernorm | rmsnorm (no mean subtraction, no bias)
    # the output head is the token embedding (GPT-2); false: a head of its own
    tie_embeddings: bool = True
    # start every block's output projections (and an untied head) at zero
    zero_init_proj: bool = False
    # a head's size; None: n_embd / n_head. Set by structured pruning, which removes heads.
    head_dim: int | None = None
    # the MLP's hidden width; None: 4 * n_embd. Set by structured pruning, which removes neurons.
    mlp_hidden: int | None = None
    # the standard deviation of the initial weights (GPT-2's 0.02); μP divides the hidden
    # matrices' by sqrt(width multiplier)
    init_std: float = 0.02
    # sp: standard parametrization (GPT-2) | mup: maximal update parametrization (Tensor
    # Programs V, arXiv 2203.03466), whose best learning rate carries over between widths
    parametrization: str = "sp"
    # μP's base shape: the width and head size the hyperparameters were tuned at (None: this
    # model's own, a width multiplier m = 1)
    mup_base_width: int | None = None
    mup_base_head_dim: int | None = None
    # the token (and position) embedding's output is multiplied by input_mult; the logits by
    # output_mult (by output_mult / m under μP)
    input_mult: float = 1.0
    output_mult: float = 1.0
    # residual branches are multiplied by (n_layer / mup_base_depth)^-depth_alpha: 0 off,
    # 1 CompleteP (Dey et al. 2025, arXiv 2505.01618), 0.5 depth-μP (Yang et al. 2023)
    depth_alpha: float = 0.0
    mup_base_depth: int | None = None  # None: this model's n_layer

    def __post_init__(self) -> None:
        for key in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"model.{key}={getattr(self, key)} must be > 0")
        if self.logit_softcap is not None and not self.logit_softcap > 0:
            raise ConfigError(
                f"model.logit_softcap={self.logit_softcap} must be > 0, or null for no cap"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout={self.dropout} must lie in [0, 1)")
        for key in ("head_dim", "mlp_hidden"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise ConfigError(f"model.{key}={getattr(self, key)} must be > 0, or null")
        if self.head_dim is None and self.n_embd % self.n_head != 0:
            raise ConfigError(
                f"model.n_embd={self.n_embd} must be divisible by model.n_head={self.n_head}"
            )
        for key, choices in (
            ("position", ("learned", "rope")),
            ("mlp", ("gelu", "relu2")),
            ("norm", ("layernorm", "rmsnorm")),
            ("gelu", ("exact", "tanh")),
        ):
            if getattr(self, key) not in choices:
                raise ConfigError(
                    f"model.{key}={getattr(self, key)!r} must be one of {', '.join(choices)}"
                )
        if self.gelu != "exact" and self.mlp != "gelu":
            raise ConfigError(f"model.gelu={self.gelu} applies to model.mlp=gelu, not {self.mlp}")
        if self.position == "rope" and self.head_size % 2:
            raise ConfigError(f"model.position=rope needs an even head size, not {self.head_size}")
        if not self.rope_base > 1:
            raise ConfigError(f"model.rope_base={self.rope_base} must be > 1")
        self._check_parametrization()

    def _check_parametrization(self) -> None:
        if self.parametrization not in ("sp", "mup"):
            raise ConfigError(
                f"model.parametrization={self.parametrization!r} must be one of sp, mup"
            )
        for key in ("init_std", "input_mult", "output_mult"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"model.{key}={getattr(self, key)} must be > 0")
        if not (self.depth_alpha == 0 or 0.5 <= self.depth_alpha <= 1):
            raise ConfigError(
                f"model.depth_alpha={self.depth_alpha} must be 0 (off) or in [0.5, 1] "
                "(1: CompleteP, 0.5: depth-μP); below 0.5 the residual stream grows with depth"
            )
        for key in ("mup_base_width", "mup_base_head_dim", "mup_base_depth"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise ConfigError(f"model.{key}={getattr(self, key)} must be > 0, or null")
        # The base must itself be a model: whole heads of the base head size (a base width that
        # is not, e.g. a head size typed for a width, is refused rather than silently scaled).
        base_head = self.mup_base_head_dim or self.head_size
        if self.mup_base_width is not None and self.mup_base_width % base_head:
            raise ConfigError(
                f"model.mup_base_width={self.mup_base_width} must be a multiple of the base head "
                f"size {base_head} (the width the hyperparameters were tuned at, in whole heads)"
            )

    @property
    def head_size(self) -> int:
        return self.head_dim or self.n_embd // self.n_head

    @property
    def mlp_width(self) -> int:
        return self.mlp_hidden or 4 * self.n_embd

    @property
    def width_mult(self) -> float:
        """μP's width multiplier m: n_embd over the base width (1 under SP)."""
        if self.parametrization != "mup" or self.mup_base_width is None:
            return 1.0
        return self.n_embd / self.mup_base_width

    @property
    def attn_scale(self) -> float | None:
        """The attention logits' scale: None (SDPA's 1/sqrt(d)) under SP and at the base head
        size; μP's 1/d otherwise, as sqrt(d_base)/d so that it equals SP's at the base."""
        base = self.mup_base_head_dim
        if self.parametrization != "mup" or base is None or base == self.head_size:
            return None
        return math.sqrt(base) / self.head_size

    @property
    def branch_mult(self) -> float:
        """Each residual branch's multiplier, (L / L_base)^-depth_alpha (1 when off)."""
        if self.depth_alpha == 0 or self.mup_base_depth is None:
            return 1.0
        return (self.n_layer / self.mup_base_depth) ** -self.depth_alpha

    @property
    def padded_vocab_size(self) -> int:
        return math.ceil(self.vocab_size / VOCAB_MULTIPLE) * VOCAB_MULTIPLE

    @classmethod
    def from_keys(cls, model: Mapping[str, Any], vocab_size: int) -> GPTConfig:
        """The config of a `model:` group (its `name` is not a field) for a vocabulary."""
        return cls(**{k: v for k, v in model.items() if k != "name"}, vocab_size=vocab_size)

    def to_dict(self) -> dict:
        return asdict(self)


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's only lets you drop the bias since 2.1)."""

    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class RMSNorm(nn.Module):
    """x / rms(x) times a learned gain: LayerNorm without the mean and the bias."""

    def __init__(self, ndim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, 1e-5)


def make_norm(config: GPTConfig) -> nn.Module:
    return (
        RMSNorm(config.n_embd)
        if config.norm == "rmsnorm"
        else LayerNorm(config.n_embd, bias=config.bias)
    )


class Rotary(nn.Module):
    """Rotary position embedding: each pair (x_i, x_{i+d/2}) of a head's q and k is rotated by
    the angle position * base^(-2i/d), so q·k depends on positions only through their
    difference. The cos/sin tables are buffers recomputed at load, not parameters."""

    def __init__(self, head_dim: int, block_size: int, base: float) -> None:
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(block_size, dtype=torch.float32), inv_freq)  # (T, d/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate x (B, n_head, T, head_dim) by its positions 0..T-1."""
        T, half = x.size(-2), x.size(-1) // 2
        cos, sin = self.cos[:T].to(x.dtype), self.sin[:T].to(x.dtype)
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.head_size
        inner = config.n_head * config.head_size  # n_embd unless heads were pruned away
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * inner, bias=config.bias)
        self.c_proj = nn.Linear(inner, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.rotary = (
            Rotary(config.head_size, config.block_size, config.rope_base)
            if config.position == "rope"
            else None
        )
        self.qk_norm = config.qk_norm
        self.scale = config.attn_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.size()
        inner = self.n_head * self.head_dim
        q, k, v = self.c_attn(x).split(inner, dim=2)
        # (B, T, inner) -> (B, n_head, T, head_dim)
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))
        if self.qk_norm:  # bounded attention logits: a higher learning rate stays stable
            q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        # SDPA dispatches to flash / memory-efficient kernels on GPU.
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=True,
            scale=self.scale,
        )
        y = y.transpose(1, 2).contiguous().view(B, T, inner)
        return self.resid_dropout(self.c_proj(y))


class ReLUSquared(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_width, bias=config.bias)
        self.gelu = (
            ReLUSquared()
            if config.mlp == "relu2"
            else nn.GELU(approximate="none" if config.gelu == "exact" else "tanh")
        )
        self.c_proj = nn.Linear(config.mlp_width, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)
        self.branch_mult = config.branch_mult

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch_mult == 1.0:
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))
        # depth scaling: each branch's share of the stream shrinks as blocks are added
        x = x + self.branch_mult * self.attn(self.ln_1(x))
        return x + self.branch_mult * self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        modules = dict(wte=nn.Embedding(config.padded_vocab_size, config.n_embd))
        if config.position == "learned":
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        modules |= dict(
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=make_norm(config),
        )
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        if config.tie_embeddings:
            # Weight tying (Press & Wolf 2017): the output projection is the input embedding.
            self.transformer.wte.weight = self.lm_head.weight

        self.apply(self._init_weights)
        # GPT-2: residual projections are scaled so the residual stream's variance does not
        # grow with depth (two residual additions per layer); with depth_alpha the branch
        # multiplier does that, so the projections keep the base depth's scale. Zero-initialised,
        # every block starts as the identity and the first steps train the embeddings and head
        # (modded-nanogpt).
        depth = config.mup_base_depth if config.branch_mult != 1.0 else config.n_layer
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=config.init_std / math.sqrt(2 * depth))
                if config.zero_init_proj:
                    nn.init.zeros_(p)
        if config.zero_init_proj and not config.tie_embeddings:
            nn.init.zeros_(self.lm_head.weight)
        # μP: hidden matrices (fan-in growing with width) start at std/sqrt(m), so each output
        # coordinate stays O(1) at any width; embeddings and the head keep std (Tensor Programs
        # V, Table 3, in microsoft/mup's MuReadout form: the head's 1/m is in `head`).
        if config.width_mult != 1.0:
            with torch.no_grad():
                for p in self.transformer.h.parameters():
                    if p.dim() == 2:
                        p.div_(math.sqrt(config.width_mult))

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; position embeddings are excluded by default, as in nanoGPT (the
        token embedding is the tied output layer, so it counts)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """Final-LayerNorm activations (B, T, n_embd): everything but the output head."""
        _, T = idx.size()
        if T > self.config.block_size:
            raise ConfigError(
                f"sequence length {T} exceeds the model's context "
                f"model.block_size={self.config.block_size}"
            )
        x = self.transformer.wte(idx)
        if "wpe" in self.transformer:  # with rotary embeddings, positions enter in attention
            x = x + self.transformer.wpe(torch.arange(T, dtype=torch.long, device=idx.device))
        if self.config.input_mult != 1.0:
            x = x * self.config.input_mult
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x)
        return self.transformer.ln_f(x)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the true vocabulary from final hidden states, soft-capped if configured.

        The slice drops the padded columns; it is a view, so no copy of the logits is made.
        μP's readout multiplier output_mult / m is applied to the hidden states (n_embd wide,
        cheaper than the logits): every path (training, the chunked head, evaluation,
        generation) comes through here.
        """
        mult = self.config.output_mult / self.config.width_mult
        if mult != 1.0:
            hidden = hidden * mult
        logits = self.lm_head(hidden)[..., : self.config.vocab_size]
        if self.config.logit_softcap is not None:
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        return logits

    def forward(self, idx: torch.Tensor, head: bool = True) -> torch.Tensor:
        """Logits (B, T, vocab_size) over the true vocabulary; with head=False the final hidden
        states (B, T, n_embd), for a loss that applies the head chunk by chunk."""
        hidden = self.hidden_states(idx)
        return self.head(hidden) if head else hidden

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample continuations of idx (B, T); temperature 0 means greedy decoding."""
        for _ in range(max_new_tokens):
            idx_cond = idx[:, -self.config.block_size :]
            logits = self.head(self.hidden_states(idx_cond)[:, -1, :])
            if temperature == 0:
                idx_next = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits.float() / temperature
                if top_k is not None:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float("inf")
                probs = F.softmax(logits, dim=-1)
                idx_next = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx
