"""init_from: weights from a nanolab run, a nanoGPT checkpoint or a Hugging Face GPT-2
directory load into nanolab's model and compute what their own code computes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import compose_train, run_cli
from torch.nn import functional as F

from nanolab import ConfigError
from nanolab.data import TokenData
from nanolab.model import GPT, GPTConfig
from nanolab.weights import load_into, read_weights

GPT2_META = {"tokenizer": "gpt2", "vocab_size": 50257}


@pytest.mark.parametrize("safetensors", [True, False])
def test_a_hugging_face_gpt2_gives_the_logits_of_transformers(tmp_path, safetensors):
    transformers = pytest.importorskip(
        "transformers",
        reason="the transformers package (dev extra) is needed to build the reference",
    )
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=48, vocab_size=50257)
    ).eval()
    hf.save_pretrained(tmp_path, safe_serialization=safetensors)
    model = GPT(
        GPTConfig(
            n_layer=2, n_head=2, n_embd=32, block_size=48, vocab_size=50257, bias=True, gelu="tanh"
        )
    ).eval()
    load_into(model, read_weights(str(tmp_path)), GPT2_META)
    idx = torch.randint(0, 50257, (3, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(idx).logits
        got = model(idx)
    assert (got - expected).abs().max().item() < 1e-5


def test_hugging_face_weights_need_gpt2s_gelu_and_biases(tmp_path):
    transformers = pytest.importorskip(
        "transformers",
        reason="the transformers package (dev extra) is needed to write the directory",
    )
    transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=16, vocab_size=50257)
    ).save_pretrained(tmp_path)
    model = GPT(
        GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=50257, bias=False)
    )
    with pytest.raises(
        ConfigError,
        match=r"bias: Hugging Face GPT-2 .* has True, model.bias=False; "
        r"gelu: .* has tanh, model.gelu=exact",
    ):
        load_into(model, read_weights(str(tmp_path)), GPT2_META)


def test_a_nanogpt_checkpoint_of_a_compiled_model_loads(tmp_path):
    """nanoGPT's train.py saves {model_args, model, ...}; a compiled model's keys carry
    _orig_mod."""
    source = nanogpt_char_checkpoint(tmp_path / "ckpt.pt")
    model = GPT(
        GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=65, bias=False)
    ).eval()
    load_into(
        model, read_weights(str(tmp_path / "ckpt.pt")), {"tokenizer": "char", "vocab_size": 65}
    )
    idx = torch.randint(0, 65, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(idx), source(idx))
    wrong = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=65, bias=False))
    with pytest.raises(
        ConfigError, match=r"n_embd: nanoGPT checkpoint .*ckpt.pt has 32, model.n_embd=64"
    ):
        load_into(
            wrong, read_weights(str(tmp_path / "ckpt.pt")), {"tokenizer": "char", "vocab_size": 65}
        )


def test_a_model_name_without_a_local_directory_is_explained():
    with pytest.raises(ConfigError, match="needs the hub"):
        read_weights("gpt2")


def nanogpt_char_checkpoint(path, block: int = 32) -> GPT:
    """A nanoGPT train.py checkpoint (compiled model's keys) of a random character model."""
    torch.manual_seed(0)
    source = GPT(
        GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=block, vocab_size=65, bias=False)
    ).eval()
    torch.save(
        {
            "model": {f"_orig_mod.{k}": v for k, v in source.state_dict().items()},
            "model_args": {
                "n_layer": 2,
                "n_head": 2,
                "n_embd": 32,
                "block_size": block,
                "bias": False,
                "vocab_size": 65,
                "dropout": 0.0,
            },
            "optimizer": {},
            "iter_num": 250,
            "best_val_loss": torch.tensor(2.5),
            "config": {"dataset": "shakespeare_char"},
        },
        path,
    )
    return source


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
