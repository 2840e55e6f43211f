r"""Sample text from a trained checkpoint: a nanolab run, nanoGPT's ckpt.pt or a Hugging Face
GPT-2 directory.

    python -m nanolab.sample checkpoint=outputs/2026-01-01/12-00-00 prompt="ROMEO:" num_samples=2
    python -m nanolab.sample checkpoint=../nanoGPT/out-shakespeare-char/ckpt.pt \
        data.dir=data/shakespeare_char
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from nanolab import ConfigError, exit_on_config_error
from nanolab.config import SampleKeys, check_entry_types
from nanolab.data import TokenData
from nanolab.quantize import check_quantize, int8_weights
from nanolab.runtime import Runtime, pick_device
from nanolab.tokenizer import GPT2_VOCAB, Tokenizer, tokenizer_from_meta
from nanolab.weights import foreign_data_dir, model_from_weights, read_weights

log = logging.getLogger("nanolab.sample")


def sample(cfg: DictConfig) -> list[str]:
    check_entry_types(cfg, SampleKeys)
    if cfg.max_new_tokens < 0 or cfg.num_samples < 1:
        raise ConfigError(
            f"max_new_tokens={cfg.max_new_tokens} must be "
            f">= 0 and num_samples={cfg.num_samples} >= 1"
        )
    if cfg.temperature < 0:
        raise ConfigError(f"temperature={cfg.temperature} must be >= 0")
    if cfg.top_k is not None and cfg.top_k < 1:
        raise ConfigError(f"top_k={cfg.top_k} must be >= 1, or null to sample among all tokens")
    check_quantize(cfg.quantize)
    device = Runtime.create(pick_device(cfg.device)).device
    model, tokenizer = load_for_sampling(cfg, device)
    if cfg.quantize:
        int8_weights(model)
    prompt = cfg.prompt
    if prompt.startswith("FILE:"):
        path = Path(prompt[5:])
        try:
            prompt = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(
                f"prompt=FILE:{path} cannot be read as UTF-8 text "
                f"({getattr(e, 'strerror', None) or e}); give a readable file"
            ) from None
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ConfigError("prompt encodes to no tokens; give at least one character")
    x = torch.tensor([ids] * cfg.num_samples, dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    out = model.generate(
        x, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k, generator=generator
    )
    return [tokenizer.decode(row.tolist()) for row in out]


def load_for_sampling(cfg: DictConfig, device: torch.device) -> tuple[torch.nn.Module, Tokenizer]:
    """The model and its tokenizer: a nanolab checkpoint carries its vocabulary; nanoGPT's and
    GPT-2's weights use GPT-2's, or for a nanoGPT character model the one in data.dir."""
    weights = read_weights(cfg.checkpoint, "checkpoint")
    if weights.run:
        meta = weights.run.data_meta
    elif weights.tokenizer == "gpt2":  # GPT-2's BPE ships with nanolab
        meta = {"tokenizer": "gpt2", "vocab_size": GPT2_VOCAB}
    else:
        meta = TokenData.read(foreign_data_dir(weights, cfg.data.dir, cfg.checkpoint)).meta
    model = model_from_weights(weights, meta, "checkpoint").to(device).eval()
    return model, tokenizer_from_meta(meta)


@hydra.main(version_base="1.3", config_path="pkg://nanolab.configs", config_name="sample")
def main(cfg: DictConfig) -> None:
    with exit_on_config_error(log):
        texts = sample(cfg)
    for text in texts:
        print(text)
        print("-" * 40)


if __name__ == "__main__":
    main()
