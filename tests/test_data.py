"""Data preparation, tokenizers, the offline GPT-2 encoding and the clear errors."""

import fcntl
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import tiktoken
import torch
from conftest import compose_train

from nanolab import DataError
from nanolab.data import TokenData, prepare
from nanolab.dataloader import BatchSampler
from nanolab.tokenizer import gpt2_encoding, tokenizer_from_meta


def data_cfg(name: str, data_root: Path, **overrides):
    cfg = compose_train(f"data={name}", *(f"data.{k}={v}" for k, v in overrides.items())).data
    return cfg


def test_shakespeare_char_matches_nanogpt(data_root):
    meta = prepare(data_cfg("shakespeare_char", data_root))
    assert (meta["vocab_size"], meta["train_tokens"], meta["val_tokens"]) == (
        65,
        1_003_854,
        111_540,
    )
    directory = data_root / "shakespeare_char"
    assert (directory / "train.bin").stat().st_size == 2 * 1_003_854
    text = (directory / "input.txt").read_text()
    tokens = np.fromfile(directory / "val.bin", dtype=np.uint16)
    assert tokenizer_from_meta(meta).decode(tokens.tolist()) == text[len(text) - 111_540 :]


def test_shakespeare_gpt2_matches_nanogpt(data_root):
    meta = prepare(data_cfg("shakespeare", data_root))
    assert (meta["vocab_size"], meta["train_tokens"], meta["val_tokens"]) == (
        50257,
        301_966,
        36_059,
    )
    tok = tokenizer_from_meta(meta)
    text = (data_root / "shakespeare_char" / "input.txt").read_text()
    assert tok.decode(tok.encode(text[:5000])) == text[:5000]


def test_gpt2_encoding_is_offline_tiktoken():
    enc = gpt2_encoding()
    assert enc.encode("hello world") == [31373, 995]
    assert enc.n_vocab == 50257 and enc.eot_token == 50256
    assert isinstance(enc, tiktoken.Encoding)


def test_missing_shakespeare_names_both_fixes(tmp_path):
    cfg = compose_train(
        f"data.raw_path={tmp_path}/nowhere/input.txt",
        "data.url=http://127.0.0.1:9/input.txt",
        f"data.dir={tmp_path}/d",
    ).data
    with pytest.raises(DataError) as err:
        prepare(cfg)
    message = str(err.value)
    assert (
        f"{tmp_path}/nowhere/input.txt" in message
        and "data.raw_path=" in message
        and "127.0.0.1:9" in message
    )
    assert not (tmp_path / "d").exists() and not (tmp_path / "nowhere").exists()


def test_text_file_and_folder_round_trip(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("the cat sat on the mat. " * 50)
    (tmp_path / "corpus" / "b.md").write_text("über naïve café — ok " * 50)
    (tmp_path / "corpus" / ".cache").mkdir()  # hidden folders and files are no part of a corpus
    (tmp_path / "corpus" / ".cache" / "index.txt").write_text("XYZ" * 100)
    (tmp_path / "corpus" / ".notes.txt").write_text("QQQ")
    for tokenizer in ("char", "gpt2"):
        cfg = compose_train(
            "data=text",
            f"data.path={tmp_path}/corpus",
            f"data.tokenizer={tokenizer}",
            f"data.dir={tmp_path}/{tokenizer}",
        ).data
        meta = prepare(cfg)
        data = TokenData.load(cfg)
        tok = tokenizer_from_meta(meta)
        text = (
            (tmp_path / "corpus" / "a.txt").read_text()
            + "\n"
            + (tmp_path / "corpus" / "b.md").read_text()
        )
        assert tok.decode(np.concatenate([data.train, data.val]).tolist()) == text


@pytest.mark.parametrize(
    "content,match",
    [(b"", "holds no text"), (b"  \n", "holds no text"), (b"caf\xe9 latin-1", "not UTF-8")],
)
def test_bad_text_files_are_named(tmp_path, content, match):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    cfg = compose_train("data=text", f"data.path={path}", f"data.dir={tmp_path}/d").data
    with pytest.raises(DataError, match=match) as err:
        prepare(cfg)
    assert str(path) in str(err.value)
    assert not any((tmp_path / "d").glob("*.bin"))


def test_changed_source_is_prepared_again_and_torn_bins_are_not_trusted(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcdefgh" * 100)
    cfg = compose_train("data=text", f"data.path={path}", f"data.dir={tmp_path}/d").data
    assert prepare(cfg)["vocab_size"] == 8
    path.write_text("xyz" * 300)
    assert prepare(cfg)["vocab_size"] == 3
    with open(tmp_path / "d" / "train.bin", "r+b") as f:  # as if a write had been cut short
        f.truncate(10)
    prepare(cfg)
    assert (tmp_path / "d" / "train.bin").stat().st_size == 2 * json.loads(
        (tmp_path / "d" / "meta.json").read_text()
    )["train_tokens"]


def test_runs_that_find_the_data_missing_at_once_prepare_it_one_after_another(tmp_path):
    """The jobs of a parallel sweep on a fresh checkout: one prepares, the other waits for
    its lock and then reads what it prepared (before, the second deleted the first's files)."""
    path = tmp_path / "t.txt"
    path.write_text("abcdefgh" * 100)
    cfg = compose_train("data=text", f"data.path={path}", f"data.dir={tmp_path}/d").data
    (tmp_path / "d").mkdir()
    done = []
    with open(tmp_path / "d" / ".prepare.lock", "a") as held:  # another job, preparing
        fcntl.flock(held, fcntl.LOCK_EX)
        waiting = threading.Thread(target=lambda: done.append(prepare(cfg)))
        waiting.start()
        waiting.join(0.5)
        assert waiting.is_alive() and not (tmp_path / "d" / "meta.json").exists()
    waiting.join(30)
    assert done and done[0]["vocab_size"] == 8
    # prepared data is read without the lock (a read-only copy needs no lock file)
    with open(tmp_path / "d" / ".prepare.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert prepare(cfg) == done[0]


def test_hf_loader_on_local_files(tmp_path):
    """The `datasets` code path of tinystories/openwebtext, fed local JSON-lines files."""
    stories = [{"text": f"Once upon a time there was story number {i}."} for i in range(40)]
    for split, rows in (("train", stories[:30]), ("validation", stories[30:])):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = compose_train(
        "data=tinystories",
        "data.hf_path=json",
        f"data.data_files={{train: {tmp_path}/train.jsonl, "
        f"validation: {tmp_path}/validation.jsonl}}",
        "data.num_proc=1",
        f"data.dir={tmp_path}/d",
    ).data
    meta = prepare(cfg)
    enc = gpt2_encoding()
    expected = sum(len(enc.encode_ordinary(r["text"])) + 1 for r in stories[:30])
    assert meta["train_tokens"] == expected
    data = TokenData.load(cfg)
    assert enc.decode(data.val.tolist()).startswith(
        "Once upon a time there was story number 30.<|endoftext|>"
    )
    # openwebtext has no validation split: a held-out fraction is carved out of train
    cfg.val_split, cfg.val_fraction, cfg.dir = None, 0.1, f"{tmp_path}/owt"
    meta = prepare(cfg)
    assert meta["val_tokens"] > 0 and meta["train_tokens"] + meta["val_tokens"] == expected
    # shards of 100 tokens: documents cut across shards come back whole
    unsharded = TokenData.load(cfg).train[:]
    cfg.shard_gb, cfg.dir = 200 / 2**30, f"{tmp_path}/owt_sharded"
    sharded = TokenData.load(cfg)
    assert len(sharded.meta["train_shards"]) == -(-len(unsharded) // 100)
    assert np.array_equal(sharded.train[np.arange(len(unsharded))], unsharded)


def test_sampler_is_reproducible_and_resumable():
    tokens = np.arange(1000, dtype=np.uint16)
    a = BatchSampler(tokens, batch_size=4, block_size=8, seed=7, device=torch.device("cpu"))
    b = BatchSampler(tokens, batch_size=4, block_size=8, seed=7, device=torch.device("cpu"))
    x, y = a.next_batch()
    assert torch.equal(y, x + 1) and x.shape == (4, 8)
    b.next_batch()
    state = a.state_dict()
    after = a.next_batch()
    b.load_state_dict(state)
    assert torch.equal(b.next_batch()[0], after[0])


def test_block_size_longer_than_a_split_is_refused(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcdefgh" * 100)
    cfg = compose_train("data=text", f"data.path={path}", f"data.dir={tmp_path}/d").data
    with pytest.raises(DataError, match="model.block_size=128"):
        TokenData.load(cfg).check_block_size(128)


def test_chunked_encoding_equals_encoding_in_one_piece(data_root):
    """Large texts are encoded in ~1M-character chunks; the cuts must not change any token."""
    from nanolab.data import _encode
    from nanolab.tokenizer import CharTokenizer, GPT2Tokenizer

    shakespeare = (data_root / "shakespeare_char" / "input.txt").read_text()
    # > 2 MB, odd whitespace
    text = shakespeare + "\n\n  indented\n\n\nend" + shakespeare[::-1] + "\n \n"
    gpt2 = GPT2Tokenizer()
    chunked = _encode(gpt2, text, np.dtype(np.uint16), desc="test")
    assert chunked.tolist() == gpt2.encode(text)
    # 3 chunks: two batches
    assert (
        _encode(gpt2, text, np.dtype(np.uint16), desc="test", batch=2).tolist() == chunked.tolist()
    )
    chars = CharTokenizer(sorted(set(text)))
    assert _encode(chars, text, np.dtype(np.uint16), desc="test").tolist() == chars.encode(text)


SHARD_GB = 4000 / 2**30  # 4000 bytes: 2000 uint16 tokens per shard


def test_sharded_split_reads_like_one_file(data_root, tmp_path):
    raw = data_root / "shakespeare_char" / "input.txt"
    whole = TokenData.load(data_cfg("text", data_root, path=raw, dir=tmp_path / "whole"))
    sharded = TokenData.load(
        data_cfg("text", data_root, path=raw, dir=tmp_path / "sharded", shard_gb=SHARD_GB)
    )
    meta = sharded.meta
    assert len(meta["train_shards"]) == -(-meta["train_tokens"] // 2000) and set(
        meta["train_shards"][:-1]
    ) == {2000}
    assert (tmp_path / "sharded" / "train_000.bin").exists() and not (
        tmp_path / "sharded" / "train.bin"
    ).exists()
    assert len(sharded.train) == len(whole.train)
    assert np.array_equal(sharded.train[np.arange(len(whole.train))], whole.train)
    a = BatchSampler(whole.train, batch_size=16, block_size=64, seed=3, device=torch.device("cpu"))
    b = BatchSampler(
        sharded.train, batch_size=16, block_size=64, seed=3, device=torch.device("cpu")
    )
    for _ in range(20):  # 320 windows, many of them across shard boundaries
        assert torch.equal(a.next_batch()[0], b.next_batch()[0])


def test_interrupted_preparation_resumes_after_its_finished_shards(
    data_root, tmp_path, monkeypatch
):
    import nanolab.data

    cfg = data_cfg(
        "text",
        data_root,
        path=data_root / "shakespeare_char" / "input.txt",
        dir=tmp_path / "d",
        shard_gb=SHARD_GB,
    )
    real_atomic_path, written = nanolab.data.atomic_path, []

    def killed_at_the_fourth_file(path):
        if len(written) == 3:
            raise KeyboardInterrupt
        written.append(path.name)
        return real_atomic_path(path)

    monkeypatch.setattr(nanolab.data, "atomic_path", killed_at_the_fourth_file)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg)
    monkeypatch.undo()
    assert (
        written == ["train_000.bin", "train_001.bin", "train_002.bin"]
        and not (tmp_path / "d" / "meta.json").exists()
    )
    finished = {name: (tmp_path / "d" / name).stat().st_mtime_ns for name in written}
    meta = prepare(cfg)
    # kept, not rewritten
    assert {name: (tmp_path / "d" / name).stat().st_mtime_ns for name in written} == finished
    fresh = TokenData.load(
        data_cfg(
            "text",
            data_root,
            path=data_root / "shakespeare_char" / "input.txt",
            dir=tmp_path / "fresh",
        )
    )
    assert meta["train_tokens"] == fresh.meta["train_tokens"]
    assert np.array_equal(TokenData.load(cfg).train[np.arange(len(fresh.train))], fresh.train)
    assert not (tmp_path / "d" / "preparing.json").exists()


def test_document_lengths_of_a_large_tokenized_dataset_are_read_as_one_array():
    import time

    import datasets

    from nanolab.data import document_lengths

    lengths = np.random.default_rng(0).integers(1, 500, 40_000)
    tokenized = datasets.Dataset.from_dict({"len": lengths, "ids": [[0]] * 40_000})
    t0 = time.perf_counter()
    read = document_lengths(tokenized)
    assert np.array_equal(read, lengths)
    # the lazy row-by-row Column read took 1.7 s (datasets#7709)
    assert time.perf_counter() - t0 < 1.0
