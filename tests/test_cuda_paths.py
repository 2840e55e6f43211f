"""The CUDA-side paths a first GPU run takes, checked on CPU: float16 autocast and GradScaler
run on CPU in torch 2.13, and torch.cuda is patched where a device count or capability is
involved. Each test names the defect it guards against."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_train
from torch.nn import functional as F

from nanolab.checkpoint import load_checkpoint, upgrade
from nanolab.config import check_config
from nanolab.distributed import World
from nanolab.launch import RunInfo
from nanolab.losses import LOSSES, chunked_head_loss, get_loss
from nanolab.resume import Resume
from nanolab.run import build_run
from nanolab.runtime import Runtime, capture_rng_state, pick_dtype, restore_rng_state
from nanolab.train import train

CPU = torch.device("cpu")


def run_in_process(run_dir: Path, *overrides: str) -> float:
    return train(
        compose_train(*TINY, "logger.mode=disabled", *overrides),
        RunInfo(dir=run_dir, group=None, name=None),
    )


def count_device_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The list that every Python-level read of a tensor's value (item, tolist, float, int,
    bool, cpu: each a wait for the device on a GPU) is appended to, by name."""
    reads: list[str] = []
    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "cpu"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(
            torch.Tensor,
            name,
            lambda self, *a, _o=original, _n=name, **k: reads.append(_n) or _o(self, *a, **k),
        )
    return reads


class FakeCuda:
    """torch.cuda's RNG calls on a machine with `count` GPUs, recording what is set where."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, count: int) -> None:
        self.count, self.set = count, []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "get_rng_state", self.get_rng_state)
        monkeypatch.setattr(
            torch.cuda, "get_rng_state_all", lambda: [self.get_rng_state(i) for i in range(count)]
        )
        monkeypatch.setattr(torch.cuda, "set_rng_state", self.set_rng_state)
        monkeypatch.setattr(
            torch.cuda,
            "set_rng_state_all",
            lambda states: [self.set_rng_state(s, i) for i, s in enumerate(states)],
        )

    def _index(self, device: object) -> int:
        index = device if isinstance(device, int) else (torch.device(device).index or 0)
        if index >= self.count:
            raise IndexError(f"cuda:{index} is not visible ({self.count} GPUs)")
        return index

    def get_rng_state(self, device: object = "cuda") -> torch.Tensor:
        return torch.full((16,), self._index(device), dtype=torch.uint8)

    def set_rng_state(self, state: torch.Tensor, device: object = "cuda") -> None:
        self.set.append((int(state[0]), self._index(device)))


def test_1_cuda_rng_of_the_runs_own_device_only_so_fewer_visible_gpus_resume(monkeypatch):
    FakeCuda(monkeypatch, 8)
    saved = capture_rng_state(torch.device("cuda", 3))
    assert int(saved["cuda"][0]) == 3  # the state of cuda:3, the run's device, and no other
    fake = FakeCuda(monkeypatch, 1)  # resumed where one GPU is visible
    restore_rng_state(saved, torch.device("cuda", 0))
    assert fake.set == [(3, 0)]
    # A checkpoint of 507db7a holds every visible GPU's state: its first is taken.
    old = {
        "config": {},
        "model_config": {},
        "sampler": {"streams": {}},
        "rng": {**saved, "cuda": [torch.full((16,), i, dtype=torch.uint8) for i in range(8)]},
    }
    restore_rng_state(upgrade(old)["rng"], torch.device("cuda", 0))
    assert fake.set[-1] == (0, 0)


def _resumed_run(run_dir: Path, *overrides: str):
    cfg = compose_train(*TINY, "logger.mode=disabled", f"resume={run_dir}", *overrides)
    check_config(cfg)
    path = run_dir / "last.pt"
    return build_run(
        cfg, World(), Runtime.create(CPU, cfg.dtype), Resume(path, load_checkpoint(path), [])
    )


def test_2_optimizer_kernel_flags_come_from_the_config_and_device_not_the_checkpoint(tmp_path):
    run_in_process(tmp_path, "optim.fused=true", "trainer.max_iters=2", "trainer.eval_interval=2")
    run = _resumed_run(tmp_path, "optim.fused=auto")
    assert all(not group["fused"] for group in run.optimizer.param_groups)  # auto on CPU: not fused
    assert torch.load(tmp_path / "last.pt", weights_only=True)["optimizer"]["param_groups"][0][
        "fused"
    ]


def test_4_float16_with_skip_step_keeps_the_scaler_cycle_and_goes_on(tmp_path, monkeypatch):
    # The training loss is nan at the third micro-batch, as an overflow would make it: that step
    # is skipped, and the steps after it (each needing a fresh unscale_) train on.
    calls, ce = [], LOSSES["ce"]

    def nan_at_the_third_step(logits, targets, cfg):
        calls.append(torch.is_grad_enabled())
        loss = ce(logits, targets, cfg)
        return loss * math.nan if calls.count(True) == 3 and torch.is_grad_enabled() else loss

    monkeypatch.setitem(LOSSES, "ce", nan_at_the_third_step)
    run_in_process(
        tmp_path,
        "dtype=float16",
        "trainer.on_nonfinite=skip_step",
        "trainer.max_iters=6",
        "trainer.eval_interval=6",
    )
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train/skipped_steps" in r] == [3]
    assert all(
        math.isfinite(r["train/loss"]) for r in records if "train/loss" in r and r["step"] != 3
    )
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "finished"


def _head_gradients(
    chunk: int, grad_scale: float | None, dtype: torch.dtype = torch.float16
) -> list[torch.Tensor]:
    """Gradients (weight, hidden) of the CE of a 16384-token vocabulary head over 2048 tokens,
    under `dtype` autocast, scaled by `grad_scale` as a GradScaler would and unscaled after."""
    g = torch.Generator().manual_seed(0)
    tokens, width, vocab = 2048, 32, 16384
    hidden = torch.randn(tokens, width, generator=g).requires_grad_()
    weight = (0.02 * torch.randn(vocab, width, generator=g)).requires_grad_()
    targets = torch.randint(vocab, (tokens,), generator=g)
    cfg = compose_train("loss=ce").loss
    scale = 1.0 if grad_scale is None else grad_scale
    with torch.autocast("cpu", dtype=torch.float16, enabled=dtype == torch.float16):
        if chunk:
            scale_tensor = None if grad_scale is None else torch.tensor(grad_scale)
            loss = chunked_head_loss(
                hidden,
                targets,
                head=lambda h: F.linear(h, weight),
                head_params=[weight],
                loss_fn=get_loss(cfg),
                cfg=cfg,
                chunk_tokens=chunk,
                grad_scale=scale_tensor,
            )
        else:
            loss = get_loss(cfg)(F.linear(hidden, weight), targets, cfg)
    (loss * scale).backward()
    return [weight.grad / scale, hidden.grad / scale]


def test_5_float16_chunked_head_applies_the_loss_scale_inside_so_gradients_do_not_underflow():
    exact = _head_gradients(0, None, torch.float32)

    def error(grads: list[torch.Tensor]) -> float:
        return max(float((g - e).norm() / e.norm()) for g, e in zip(grads, exact))

    # Per-logit gradients of about 1/(16384 * 2048) = 3e-8 lie at float16's smallest number:
    # unscaled they are rounded to 0 or 6e-8 (12% error in the hidden states' gradient).
    assert error(_head_gradients(512, None)) > 0.05, (
        "the defect this guards against no longer shows"
    )
    assert error(_head_gradients(0, 65536.0)) < 1e-3  # one piece, scaled as GradScaler does
    assert error(_head_gradients(512, 65536.0)) < 1e-3  # chunks, the scale applied inside


@pytest.mark.parametrize(
    "capability,expected",
    [
        ((7, 0), torch.float16),
        ((7, 5), torch.float16),
        ((8, 0), torch.bfloat16),
        ((9, 0), torch.bfloat16),
    ],
)
def test_6_dtype_auto_picks_float16_where_bfloat16_would_be_emulated(
    monkeypatch, capability, expected
):
    asked = []
    monkeypatch.setattr(
        torch.cuda, "get_device_capability", lambda device=None: asked.append(device) or capability
    )
    # what torch says by default
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert pick_dtype("auto", torch.device("cuda", 1)) == expected
    assert asked == [torch.device("cuda", 1)], (
        "the capability of the run's device, not the current one"
    )


def test_7_a_disabled_scalers_empty_state_does_not_block_a_float16_resume(tmp_path):
    # float32: scaler state {}
    run_in_process(tmp_path, "trainer.max_iters=2", "trainer.eval_interval=2")
    run = _resumed_run(tmp_path, "dtype=float16", "trainer.max_iters=4")
    assert run.scaler.is_enabled() and run.scaler.get_scale() == 65536.0


PEAKS = [
    ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989e12),
    ("NVIDIA H100 PCIe", torch.bfloat16, 756e12),
    ("NVIDIA H100 NVL", torch.bfloat16, 835e12),
    ("NVIDIA H200 NVL", torch.bfloat16, 835e12),
    ("NVIDIA H200", torch.bfloat16, 989e12),
    ("NVIDIA H800 PCIe", torch.bfloat16, 756e12),
    ("NVIDIA H800", torch.bfloat16, 989e12),
    ("NVIDIA L40", torch.bfloat16, 181e12),
    ("NVIDIA L40S", torch.bfloat16, 362e12),
    ("NVIDIA L4", torch.bfloat16, 121e12),
    ("NVIDIA A100-SXM4-80GB", torch.float32, 156e12),  # TF32: half of bf16
    ("Tesla V100-SXM2-16GB", torch.float32, 15.7e12),  # no TF32: the FP32 units
    ("Tesla V100-SXM2-16GB", torch.float16, 125e12),
    ("Tesla T4", torch.float32, 8.1e12),
]


@pytest.mark.parametrize("name,dtype,peak", PEAKS, ids=[f"{n}-{str(d)[6:]}" for n, d, _ in PEAKS])
def test_12_peak_flops_table_matches_each_gpu_name(monkeypatch, name, dtype, peak):
    from nanolab.runtime import device_peak_flops

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert device_peak_flops(torch.device("cuda"), dtype) == peak


def test_11_profile_counts_kernel_time_once_on_the_cpu_side_ops():
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from nanolab.bench import self_time_by_family

    def event(
        name: str, device_type: DeviceType, device_us: float, cpu_us: float
    ) -> SimpleNamespace:
        return SimpleNamespace(
            name=name,
            device_type=device_type,
            self_device_time_total=device_us,
            self_cpu_time_total=cpu_us,
            cpu_parent=None,
        )

    # On a GPU a CPU-side op carries the device time of the kernel it launched, and the kernel
    # is an event of its own: counting both doubles the time.
    launch = event("aten::mm", DeviceType.CPU, 5000.0, 40.0)
    kernel = event("ampere_sgemm_64x64_nn", DeviceType.CUDA, 5000.0, 0.0)
    assert self_time_by_family([launch, kernel], cuda=True) == {"matmul": 5000.0}
    assert self_time_by_family([launch, kernel], cuda=False) == {"matmul": 40.0}
    x = torch.randn(64, 64)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        (x @ x).sum()
    assert self_time_by_family(prof.events(), cuda=False)["matmul"] > 0  # a real CPU profile


def test_9_ddp_is_wrapped_first_then_compiled_and_no_sync_looks_through_the_compiled_module(
    tmp_path,
):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from nanolab.distributed import gradient_sync
    from nanolab.model import GPT, GPTConfig
    from nanolab.run import wrap_forward

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        model = GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=1, n_embd=8))
        forward = wrap_forward(
            model, Runtime(CPU, torch.float32, compile=True), World(rank=0, size=2)
        )
        assert (
            isinstance(forward._orig_mod, DistributedDataParallel)
            and forward._orig_mod.module is model
        )
        with gradient_sync(forward, last_micro_step=False):
            assert not forward._orig_mod.require_backward_grad_sync
        with gradient_sync(forward, last_micro_step=True):
            assert forward._orig_mod.require_backward_grad_sync
    finally:
        dist.destroy_process_group()


def test_10_evaluation_sums_stay_on_the_device_and_are_read_once(monkeypatch):
    from nanolab.metrics import TokenTotals

    cfg = compose_train("loss=ce").loss
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(64, 65, generator=g), torch.randint(65, (64,), generator=g)) for _ in range(10)
    ]
    reads = count_device_reads(monkeypatch)
    totals = TokenTotals()
    for logits, targets in batches:
        totals.update(logits, targets, LOSSES["ce"], cfg)
    assert reads == [], "a batch made the host wait for the device"
    metrics = totals.compute()
    assert reads == ["tolist"] and metrics["acc"] * 640 == pytest.approx(
        round(metrics["acc"] * 640)
    )


def _chunked_head_run(
    compile: bool, loss: str, all_counted: bool = False
) -> tuple[torch.Tensor, ...]:
    from nanolab.losses import head_loss

    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(96, 16, generator=g).requires_grad_()
    weight = (0.3 * torch.randn(50, 16, generator=g)).requires_grad_()
    targets = torch.randint(50, (96,), generator=g)
    cfg = compose_train(f"loss={loss}").loss

    def head(h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, weight)

    chunk_loss = head_loss(head, get_loss(cfg), cfg, compile=compile)
    value = chunked_head_loss(
        hidden,
        targets,
        head=head,
        head_params=[weight],
        loss_fn=get_loss(cfg),
        cfg=cfg,
        chunk_tokens=32,
        grad_scale=None,
        chunk_loss=chunk_loss,
        all_counted=all_counted,
    )
    value.backward()
    return value.detach(), hidden.grad, weight.grad


def test_8_training_chunks_do_not_read_targets_back_from_the_device(monkeypatch):
    reads = count_device_reads(monkeypatch)
    counted_anyway = _chunked_head_run(False, "ce", all_counted=False)
    assert reads == ["tolist"]  # the counts of counted targets, read once
    reads.clear()
    assert all(
        torch.equal(a, b)
        for a, b in zip(_chunked_head_run(False, "ce", all_counted=True), counted_anyway)
    )
    assert reads == []
