"""Post-training int8 weight quantization of a model's linear layers, for evaluate, sample and
prune's measurements.

    python -m nanolab.evaluate checkpoint=<run> quantize=int8
    python -m nanolab.sample checkpoint=<run> quantize=int8

torchao's `Int8WeightOnlyConfig`: each linear weight is stored as int8 with one float scale per
output row, scale = max|w| / 127.5 and q = round(w / scale) in [-128, 127] (so |w - q·scale| is
at most scale / 2), and multiplied by the float32 activations. torchao is
PyTorch's maintained quantization library; torch's own eager quantization
(torch.ao.quantization.quantize_dynamic) still runs in torch 2.13 but is deprecated there, with
its removal announced (pytorch/ao issue 2259), and its qint8 tensors are deprecated too. It is
the `quantize` extra: pip install 'nanolab[quantize]'.

Every Linear is quantized but a tied output head, which is the token embedding (an embedding
lookup is not a matmul); the embeddings and norms stay float32. The int8 layers compute in
float32 whatever autocast asks, so quantize=int8 runs with dtype float32 (or auto on a CPU).
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

from nanolab import ConfigError
from nanolab.model import GPT

QUANTIZE = (None, "int8")


def check_quantize(quantize: str | None, dtype: str = "float32") -> None:
    """A quantize= value, and the dtype it runs with (auto: float32 on a CPU, refused on a
    GPU, where auto means bfloat16 or float16)."""
    if quantize not in QUANTIZE:
        raise ConfigError(f"quantize={quantize!r} must be null or int8")
    if quantize and dtype not in ("float32", "auto"):
        raise ConfigError(
            f"quantize={quantize} runs the int8 weights with float32 activations; "
            f"dtype={dtype} is not supported with it: set dtype=float32"
        )


def int8_weights(model: GPT) -> GPT:
    """Quantize the model's linear weights to int8 in place (a tied head stays float32), on
    float32 weights only; returns the model."""
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes != {torch.float32}:
        raise ConfigError(
            f"quantize=int8 quantizes float32 weights; this model's are "
            f"{', '.join(sorted(str(d).removeprefix('torch.') for d in dtypes))}"
        )
    quantize_, config = _torchao()
    tied = model.lm_head if model.config.tie_embeddings else None
    quantize_(
        model,
        config,
        filter_fn=lambda module, _: isinstance(module, nn.Linear) and module is not tied,
    )
    return model


def _torchao():  # noqa: ANN202 (torchao's own types)
    """torchao's quantize_ and its int8 weight-only config. Its import logs a warning for each
    CUDA kernel library a CPU machine cannot load and one of torch's deprecations, which say
    nothing about int8 on a CPU: they are silenced."""
    quiet = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError:
        raise ConfigError("quantize=int8 needs torchao: pip install 'nanolab[quantize]'") from None
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
    return quantize_, Int8WeightOnlyConfig()
