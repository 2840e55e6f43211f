"""init_from: weights from a nanolab run, a nanoGPT checkpoint or a Hugging Face GPT-2
directory load into nanolab's model and compute what their own code computes."""

from __future__ import annotations

import pytest
import torch
from conftest import nanogpt_char_checkpoint

from nanolab import ConfigError
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
