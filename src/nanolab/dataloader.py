"""Batches from a prepared dataset: random windows for SGD (`BatchSampler`, one generator per
stream so that a resumed run draws the same batches) and every window in turn for full-batch
gradient descent (`FullBatchSampler`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from nanolab import ConfigError


class BatchSampler:
    """Random (x, y) windows of one split, drawn from seeded generators so that the data order
    is reproducible and can be checkpointed independently of the model's randomness.

    Each micro-batch of an optimizer step has its own stream: with `streams` = (s0, s1, ...)
    consecutive calls draw from s0, s1, ... in turn. A single process with grad_accum=A uses
    streams 0..A-1; under DDP rank r takes its share of them, so a run draws the same batches
    on any number of processes. Stream 0 is seeded with `seed` itself."""

    def __init__(
        self,
        tokens: np.ndarray,
        *,
        batch_size: int,
        block_size: int,
        seed: int,
        device: torch.device,
        streams: Sequence[int] = (0,),
        targets: np.ndarray | None = None,
    ) -> None:
        self.tokens = tokens
        self.targets = targets  # the targets when they are not the tokens (label noise)
        self.batch_size = batch_size
        self.offsets = np.arange(block_size + 1)
        self.device = device
        self.generators = {s: torch.Generator().manual_seed(stream_seed(seed, s)) for s in streams}
        self.order = list(streams)
        self.position = 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        generator = self.generators[self.order[self.position]]
        self.position = (self.position + 1) % len(self.order)
        starts = torch.randint(
            len(self.tokens) - len(self.offsets) + 1, (self.batch_size,), generator=generator
        )
        # One gather of every window from the memory map (numpy fancy indexing), then one copy
        # to the device: no Python loop over the batch's rows.
        rows = starts.numpy()[:, None] + self.offsets
        window = torch.from_numpy(self.tokens[rows].astype(np.int64))
        if self.targets is not None:  # (inputs, targets) stacked: the inputs stay the clean tokens
            window = torch.stack(
                [window[:, :-1], torch.from_numpy(self.targets[rows[:, 1:]].astype(np.int64))]
            )
        if self.device.type == "cuda":
            window = window.pin_memory().to(self.device, non_blocking=True)
        else:
            window = window.to(self.device)
        return (window[:, :-1], window[:, 1:]) if self.targets is None else (window[0], window[1])

    def state_dict(self) -> dict:
        """The generator state of each stream (taken between optimizer steps)."""
        return {"streams": {s: g.get_state() for s, g in self.generators.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore this sampler's streams from a state holding them, possibly among others
        (a DDP checkpoint holds every rank's)."""
        saved = state["streams"]
        missing = sorted(set(self.generators) - set(saved))
        if missing:
            raise ConfigError(
                f"the checkpoint has data streams {sorted(saved)} but this run needs "
                f"{sorted(self.generators)}: resume with the trainer.grad_accum (and, with "
                "trainer.fix_global_batch=false, the number of processes) it was saved with"
            )
        for s, generator in self.generators.items():
            generator.set_state(saved[s])
        self.position = 0


def full_batch_windows(tokens: int, block_size: int, batch_size: int) -> int:
    """How many windows of block_size a full batch over `tokens` tokens has; ConfigError unless
    micro-batches of batch_size windows cover them exactly (each token must weigh the same)."""
    windows = (tokens - 1) // block_size
    if windows % batch_size:
        fits = [b for b in range(1, min(windows, 256) + 1) if windows % b == 0]
        raise ConfigError(
            f"trainer.full_batch: data.train_tokens={tokens} makes {windows} windows of "
            f"model.block_size={block_size}, which trainer.batch_size={batch_size} does not "
            f"divide; use a batch_size among {fits} or change data.train_tokens"
        )
    return windows


class FullBatchSampler:
    """The whole of a (small) token set as consecutive windows, every target once: each call
    returns the next micro-batch of `batch_size` windows, so `accum` calls make one full
    batch. It holds no state between optimizer steps."""

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        block_size: int,
        device: torch.device,
        targets: np.ndarray | None = None,
    ) -> None:
        windows = full_batch_windows(len(tokens), block_size, batch_size)
        flat = torch.from_numpy(np.asarray(tokens[: windows * block_size + 1]).astype(np.int64))
        flat_targets = (
            flat
            if targets is None
            else torch.from_numpy(np.asarray(targets[: windows * block_size + 1]).astype(np.int64))
        )
        self.x = flat[:-1].view(windows, block_size).to(device)
        self.y = flat_targets[1:].view(windows, block_size).to(device)
        self.batch_size, self.position = batch_size, 0

    @property
    def micro_batches(self) -> int:
        return len(self.x) // self.batch_size

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = slice(self.position * self.batch_size, (self.position + 1) * self.batch_size)
        self.position = (self.position + 1) % self.micro_batches
        return self.x[rows], self.y[rows]

    def state_dict(self) -> dict:
        return {"streams": {}}

    def load_state_dict(self, state: dict) -> None:
        self.position = 0


def stream_seed(seed: int, stream: int) -> int:
    """Seed of a data stream: `seed` itself for stream 0, an independent one for the others."""
    if stream == 0:
        return seed
    return int(np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0])
