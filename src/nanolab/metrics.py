"""Evaluation that is the same for every training loss, and throughput accounting (MFU).

Runs trained with different losses are compared on what the model predicts, not on the
objective it was trained with: `ce` is the cross-entropy of softmax(logits), `acc` is top-1
next-token accuracy, `bpt` is bits per token (bits per character on character data).
"""

from __future__ import annotations

import contextlib
import math
import time

import torch
from omegaconf import DictConfig
from torch.nn import functional as F

from nanolab.data import BatchSampler, TokenData
from nanolab.losses import LossFn
from nanolab.model import GPT, GPTConfig

# Evaluation draws the same batches at every evaluation (less noise between points of a
# curve) from its own generator, so it never disturbs the training data order.
EVAL_SEED = 1234


class TokenTotals:
    """Sums over evaluated tokens, turned into per-token metrics at the end."""

    def __init__(self) -> None:
        self.tokens = 0
        self.loss = 0.0
        self.ce = 0.0
        self.correct = 0

    @torch.no_grad()
    def update(self, logits: torch.Tensor, targets: torch.Tensor, loss_fn: LossFn, loss_cfg: DictConfig) -> None:
        logits = logits.reshape(-1, logits.size(-1)).float()
        targets = targets.reshape(-1)
        keep = targets != loss_cfg.ignore_index
        n = int(keep.sum())
        self.tokens += n
        self.loss += float(loss_fn(logits, targets, loss_cfg)) * n
        self.ce += float(F.cross_entropy(logits, targets, ignore_index=loss_cfg.ignore_index, reduction="sum"))
        self.correct += int(((logits.argmax(dim=-1) == targets) & keep).sum())

    def compute(self) -> dict[str, float]:
        ce = self.ce / self.tokens
        return {
            "loss": self.loss / self.tokens,
            "ce": ce,
            "ppl": math.exp(min(ce, 700.0)),
            "bpt": ce / math.log(2),
            "acc": self.correct / self.tokens,
        }


@torch.no_grad()
def evaluate(
    model: GPT,
    data: TokenData,
    loss_fn: LossFn,
    loss_cfg: DictConfig,
    batch_size: int,
    eval_iters: int,
    autocast: contextlib.AbstractContextManager,
) -> dict[str, float]:
    """`val/<m>` and `train_eval/<m>` for m in loss, ce, ppl, bpt, acc over eval_iters batches."""
    device = next(model.parameters()).device
    model.eval()
    metrics = {}
    for split, prefix in (("train", "train_eval"), ("val", "val")):
        sampler = BatchSampler(getattr(data, split), batch_size, model.config.block_size, EVAL_SEED, device)
        totals = TokenTotals()
        for _ in range(eval_iters):
            x, y = sampler.next_batch()
            with autocast:
                logits = model(x)
            totals.update(logits, y, loss_fn, loss_cfg)
        metrics |= {f"{prefix}/{k}": v for k, v in totals.compute().items()}
    model.train()
    return metrics


def flops_per_token(model: GPT) -> float:
    """Training FLOPs per token: 6N for the matmuls forward and backward, plus attention's
    12·L·H·Q·T (nanoGPT's estimate_mfu, after the PaLM paper's appendix B)."""
    c: GPTConfig = model.config
    return 6 * model.num_params() + 12 * c.n_layer * c.n_head * (c.n_embd // c.n_head) * c.block_size


# Dense bf16/fp16 tensor-core peaks from the vendors' datasheets (no sparsity), matched
# against torch.cuda.get_device_name() in order, so "H100 PCIe" comes before "H100".
GPU_PEAK_BF16 = [
    ("GB200", 2.5e15),
    ("B200", 2.25e15),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),
    ("T4", 65e12),
]


def measure_cpu_matmul_flops(n: int = 1024, repeats: int = 5) -> float:
    """Best observed float32 matmul throughput of this CPU (FLOP/s), in about a tenth of a second."""
    g = torch.Generator().manual_seed(0)  # never touch the global RNG: resumed runs restore it
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    a @ b  # warm-up: thread pool and caches
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def device_peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The peak that MFU is measured against: a datasheet number on known GPUs (half of it for
    float32, which runs as TF32), a measured matmul peak on CPU, None where unknown."""
    if device.type == "cpu":
        return measure_cpu_matmul_flops()
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in GPU_PEAK_BF16:
            if key in name:
                return peak if dtype in (torch.bfloat16, torch.float16) else peak / 2
    return None
