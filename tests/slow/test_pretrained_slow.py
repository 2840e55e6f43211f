"""Pretrained weights end to end: init_from a finished run starts at its weights with a fresh
optimizer; nanolab.evaluate and nanolab.sample take a nanoGPT checkpoint and a Hugging Face
GPT-2 directory."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import TINY, compose_train, nanogpt_char_checkpoint, run_cli
from torch.nn import functional as F

from nanolab.data import TokenData


def test_init_from_a_run_starts_at_its_weights_with_a_fresh_optimizer(tmp_path):
    common = [*TINY, "logger.mode=disabled", "trainer.eval_interval=5"]
    run_cli(*common, "trainer.max_iters=10", f"hydra.run.dir={tmp_path}/source", cwd=tmp_path)
    source = json.loads((tmp_path / "source" / "summary.json").read_text())
    run_cli(
        *common,
        "trainer.max_iters=5",
        f"init_from={tmp_path}/source",
        f"hydra.run.dir={tmp_path}/tuned",
        cwd=tmp_path,
    )
    first = json.loads((tmp_path / "tuned" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 0 and first["val/ce"] == pytest.approx(source["best/val/ce"], abs=1e-6)
    # its own count from 0
    assert torch.load(tmp_path / "tuned" / "last.pt", weights_only=False)["step"] == 5

    mismatch = run_cli(
        *common,
        "trainer.max_iters=5",
        "model.n_layer=3",
        f"init_from={tmp_path}/source",
        f"hydra.run.dir={tmp_path}/bad",
        cwd=tmp_path,
        check=False,
    )
    output = mismatch.stdout + mismatch.stderr
    errors = [line for line in output.splitlines() if "init_from:" in line]
    assert mismatch.returncode == 2 and "Traceback" not in output and len(errors) == 1
    assert "n_layer: nanolab checkpoint" in errors[0] and "has 2, model.n_layer=3" in errors[0]


def test_evaluate_and_sample_take_a_nanogpt_checkpoint_on_nanogpts_character_vocabulary(
    tmp_path, data_root
):
    data = TokenData.load(compose_train().data)  # data/shakespeare_char as nanolab prepares it
    text = (data_root / "shakespeare_char" / "input.txt").read_text()
    # nanoGPT's prepare.py: chars = sorted(list(set(data)))
    assert data.meta["chars"] == sorted(set(text))
    source = nanogpt_char_checkpoint(tmp_path / "ckpt.pt")
    data_dir = f"data.dir={data_root / 'shakespeare_char'}"

    run_cli(f"checkpoint={tmp_path / 'ckpt.pt'}", data_dir, cwd=tmp_path, module="nanolab.evaluate")
    result = json.loads((tmp_path / "evaluation_val.json").read_text())
    windows = (len(data.val) - 1) // 32
    tokens = torch.from_numpy(np.asarray(data.val[: windows * 32 + 1]).astype(np.int64))
    with torch.no_grad():  # the model's own forward pass on the same consecutive windows
        logits = torch.cat([source(x) for x in tokens[:-1].view(windows, 32).split(256)])
    by_hand = F.cross_entropy(logits.flatten(0, 1), tokens[1:]).item()
    assert result["step"] == 250 and result["tokens"] == windows * 32
    assert result["ce"] == pytest.approx(by_hand, rel=1e-5)

    out = run_cli(
        f"checkpoint={tmp_path / 'ckpt.pt'}",
        data_dir,
        "prompt=ROMEO:",
        "num_samples=1",
        "max_new_tokens=20",
        cwd=tmp_path,
        module="nanolab.sample",
    )
    assert out.stdout.startswith("ROMEO:") and len(out.stdout.split("\n")[0]) >= 20

    for module in ("nanolab.evaluate", "nanolab.sample"):
        failed = run_cli(
            f"checkpoint={tmp_path / 'ckpt.pt'}", cwd=tmp_path, module=module, check=False
        )
        assert (
            failed.returncode == 2
            and "give data.dir=" in failed.stderr + failed.stdout
            and "Traceback" not in failed.stderr
        )


def test_sample_and_evaluate_take_a_hugging_face_gpt2_directory(tmp_path, data_root):
    transformers = pytest.importorskip(
        "transformers",
        reason="the transformers package (dev extra) is needed to write the directory",
    )
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=64, vocab_size=50257)
    ).save_pretrained(tmp_path / "gpt2")
    out = run_cli(
        f"checkpoint={tmp_path / 'gpt2'}",
        "prompt=Hello",
        "num_samples=1",
        "max_new_tokens=5",
        cwd=tmp_path,
        module="nanolab.sample",
    )
    assert out.stdout.startswith("Hello")
    # tiny Shakespeare in GPT-2 tokens
    data = TokenData.load(compose_train("data=shakespeare").data)
    run_cli(
        f"checkpoint={tmp_path / 'gpt2'}",
        f"data.dir={data_root / 'shakespeare'}",
        cwd=tmp_path,
        module="nanolab.evaluate",
    )
    # written into the directory
    result = json.loads((tmp_path / "gpt2" / "evaluation_val.json").read_text())
    assert result["tokens"] == (len(data.val) - 1) // 64 * 64 and result["step"] is None
    assert abs(result["ce"] - math.log(50257)) < 0.1  # random weights: about uniform
