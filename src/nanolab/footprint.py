"""What a model costs to keep and to run: bytes on disk and in memory, milliseconds per forward
pass and tokens per second when sampling, for nanolab.prune's `measure=true`.

- memory: the bytes of every parameter and buffer (a tied matrix once; an int8 weight's int8
  values and scales);
- disk: the bytes torch.save writes for the model's state_dict (weights only: a training
  checkpoint adds the optimizer); `csr` the same with every linear matrix that is at least half
  zeros stored as a torch sparse CSR tensor, which is what unstructured sparsity saves;
- forward: the median time of a forward pass over `batch` windows of the full context;
- sampling: new tokens per second of GPT.generate (no KV cache: each new token reruns the
  context, as nanolab.sample does) at batch 1 and at `batch`.

Dense kernels multiply zeros as fast as any other number, so a masked model runs as fast as the
dense one and takes the same memory: only a smaller shape (structured pruning) or fewer bytes
per weight (int8) change the time and the memory.
"""

from __future__ import annotations

import io
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

from nanolab.model import GPT
from nanolab.runtime import sync


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes held by a tensor; a tensor subclass (torchao's int8 weights) is the sum of its
    inner tensors."""
    if hasattr(t, "__tensor_flatten__") and type(t) not in (torch.Tensor, nn.Parameter):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def memory_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (parameters() yields a tied one once)."""
    return sum(tensor_bytes(p) for p in model.parameters()) + sum(
        tensor_bytes(b) for b in model.buffers()
    )


def saved_bytes(state: dict[str, torch.Tensor]) -> int:
    """Bytes torch.save writes for `state`."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getbuffer().nbytes


def csr_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict with each 2-D weight that is at least half zeros as a sparse CSR tensor."""
    state = {}
    with warnings.catch_warnings():  # "sparse CSR support is in beta": it is only saved here
        warnings.simplefilter("ignore", UserWarning)
        for name, t in model.state_dict().items():
            sparse = t.dim() == 2 and type(t) is torch.Tensor and (t == 0).float().mean() >= 0.5
            state[name] = t.to_sparse_csr() if sparse else t
    return state


def median_seconds(run: Callable[[], object], device: torch.device, repeats: int) -> float:
    """The median wall time of `repeats` calls of `run` after one untimed call, the device
    synchronised around each."""
    times = []
    for i in range(repeats + 1):
        sync(device)
        start = time.perf_counter()
        run()
        sync(device)
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.inference_mode()
def forward_ms(model: GPT, batch: int, repeats: int = 7) -> float:
    """Median milliseconds of a forward pass over `batch` random windows of the full context."""
    device = next(model.parameters()).device
    x = torch.randint(model.config.vocab_size, (batch, model.config.block_size), device=device)
    return 1000 * median_seconds(lambda: model(x), device, repeats)


@torch.inference_mode()
def sampling_tokens_per_s(model: GPT, batch: int, new_tokens: int, repeats: int = 3) -> float:
    """New tokens per second of greedy generation for `batch` sequences from a one-token prompt
    (over the median run)."""
    device = next(model.parameters()).device
    x = torch.zeros((batch, 1), dtype=torch.long, device=device)
    generate = lambda: model.generate(x, new_tokens, temperature=0)  # noqa: E731
    return batch * new_tokens / median_seconds(generate, device, repeats)


def measure(model: GPT, batch: int, new_tokens: int) -> dict[str, float]:
    """Every figure above for one model, in the report's names."""
    return {
        "memory_bytes": memory_bytes(model),
        "disk_bytes": saved_bytes(model.state_dict()),
        "csr_disk_bytes": saved_bytes(csr_state(model)),
        "forward_ms": forward_ms(model, batch),
        "sample_tok_s_b1": sampling_tokens_per_s(model, 1, new_tokens),
        "sample_tok_s_batched": sampling_tokens_per_s(model, batch, new_tokens),
    }
