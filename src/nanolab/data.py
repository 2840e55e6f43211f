"""Datasets: prepared once into data/<name>/{train,val}.bin plus meta.json, then sampled.

A prepared dataset is a flat array of token ids per split (uint16, or uint32 when the
vocabulary needs it) and a meta.json describing the tokenizer, the token counts and a hash of
the source. meta.json is written last, so a dataset without it (or with another source hash)
is prepared again; a half-written bin is never taken for a valid one. A split larger than
`data.shard_gb` is written as consecutive shards <split>_000.bin, <split>_001.bin, ..., each
written atomically, so an interrupted preparation resumes after the shards it finished.

Sources (`data.source`):
- `shakespeare`: the tiny Shakespeare text, read from `data.raw_path`, downloaded there from
  `data.url` when it is missing;
- `text`: any local UTF-8 file or folder of files (`data.path`);
- `hf`: a Hugging Face `datasets` dataset (`data.hf_path`, optionally local `data.data_files`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import re
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from nanolab import DataError
from nanolab.atomic import atomic_path, write_json
from nanolab.tokenizer import CharTokenizer, GPT2Tokenizer, Tokenizer

log = logging.getLogger(__name__)

# Bump when the on-disk format or the preparation changes, so old data is prepared again.
FORMAT_VERSION = 1


# --- reading sources -------------------------------------------------------------------------


def _read_utf8(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); convert it or remove it"
        ) from None
    return text


def _read_shakespeare(cfg: DictConfig) -> str:
    path = Path(cfg.raw_path)
    if not path.exists():
        try:
            log.info("downloading %s to %s", cfg.url, path)
            with urllib.request.urlopen(cfg.url, timeout=15) as response:
                raw = response.read()
        except OSError as e:
            raise DataError(
                f"the tiny Shakespeare text is not at {path} and could not be "
                f"downloaded from {cfg.url} ({e}). Fix: copy input.txt to {path}, "
                "point data.raw_path=... at a local copy, or set NANOLAB_DATA_DIR "
                "to the data folder that holds shakespeare_char/input.txt."
            ) from None
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_bytes(raw)
    return _read_utf8(path)


def _read_text(cfg: DictConfig) -> str:
    if cfg.path is None:
        raise DataError("data=text needs data.path=<a UTF-8 file or a folder of them>")
    path = Path(cfg.path)
    if path.is_dir():
        # Hidden files and folders (.git, .cache, editor backups) are not part of a corpus.
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            raise DataError(
                f"data.path={path} is a folder with no files in it (hidden ones are skipped)"
            )
        log.info("reading %d files of %s", len(files), path)
        text = "\n".join(
            _read_utf8(p) for p in tqdm(files, desc=f"reading {path}", unit="file", disable=None)
        )
    elif path.is_file():
        text = _read_utf8(path)
    else:
        raise DataError(f"data.path={path} does not exist")
    if not text.strip():
        raise DataError(f"data.path={path} holds no text")
    return text


# --- preparing -------------------------------------------------------------------------------


def _token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def _bin_name(split: str, shard: int, n_shards: int) -> str:
    return f"{split}.bin" if n_shards == 1 else f"{split}_{shard:03d}.bin"


def _split_files(directory: Path, meta: dict, split: str) -> list[tuple[Path, int]]:
    """(path, tokens) of each bin of a split: one, or its shards in order."""
    sizes = meta.get(f"{split}_shards", [meta[f"{split}_tokens"]])
    return [(directory / _bin_name(split, k, len(sizes)), n) for k, n in enumerate(sizes)]


def _write_split(
    directory: Path,
    split: str,
    total: int,
    dtype: np.dtype,
    shard_gb: float,
    read: Callable[[int, int], Iterator[np.ndarray]],
) -> list[int]:
    """Write a split's `total` tokens, yielded in order by read(start, stop), as one bin or as
    shards of at most shard_gb; returns the tokens per file. A shard already on disk at its
    full size was finished by an earlier, interrupted preparation of the same source (shards
    are written atomically, and prepare() clears a directory holding another source's), so it
    is kept."""
    shard_tokens = max(1, int(shard_gb * 2**30) // dtype.itemsize)
    n_shards = max(1, math.ceil(total / shard_tokens))
    sizes = [min(shard_tokens, total - k * shard_tokens) for k in range(n_shards)]
    for k, size in enumerate(sizes):
        path = directory / _bin_name(split, k, n_shards)
        if n_shards > 1 and path.exists() and path.stat().st_size == size * dtype.itemsize:
            log.info("%s: kept from an interrupted preparation", path)
            continue
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                for ids in read(k * shard_tokens, k * shard_tokens + size):
                    f.write(np.ascontiguousarray(ids, dtype=dtype).tobytes())
    return sizes


class ShardedTokens:
    """A split stored as several consecutive bins, indexed like the one array they make up
    (a window may span two shards, as it would span the same tokens in one file)."""

    def __init__(self, shards: list[np.ndarray]) -> None:
        self.shards = shards
        self.starts = np.cumsum([0] + [len(s) for s in shards])
        self.dtype = shards[0].dtype

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index)
        shard = np.searchsorted(self.starts, index, side="right") - 1
        out = np.empty(index.shape, dtype=self.dtype)
        for k in np.unique(shard):
            here = shard == k
            out[here] = self.shards[k][index[here] - self.starts[k]]
        return out


# A newline followed by a non-space character always ends a GPT-2 pre-token (and a character
# token), so cutting the text there changes no token.
_SAFE_CUT = re.compile(r"\n(?=\S)")


def _encode(
    tokenizer: Tokenizer,
    text: str,
    dtype: np.dtype,
    desc: str,
    batch: int = 4 * (os.cpu_count() or 1),
) -> np.ndarray:
    """Encode text in chunks of about a million characters, cut where no token can span the
    cut, `batch` chunks at a time on all cores, with a progress bar."""
    chunks, start = [], 0
    while start < len(text):
        cut = _SAFE_CUT.search(text, start + 2**20)
        end = cut.end() if cut else len(text)
        chunks.append(text[start:end])
        start = end
    ids = []
    with tqdm(total=len(chunks), desc=desc, unit="MB", disable=None) as progress:
        for first in range(0, len(chunks), batch):
            ids += [
                np.array(t, dtype=dtype)
                for t in tokenizer.encode_batch(chunks[first : first + batch])
            ]
            progress.update(len(chunks[first : first + batch]))
    return np.concatenate(ids) if ids else np.empty(0, dtype=dtype)


def _prepare_from_text(cfg: DictConfig, text: str) -> dict:
    """Split the raw text (before tokenizing, as nanoGPT does) and write both splits."""
    if cfg.tokenizer == "char":
        tokenizer: Tokenizer = CharTokenizer(sorted(set(text)))
    else:
        tokenizer = GPT2Tokenizer()
    n_train = int(len(text) * (1 - cfg.val_fraction))
    dtype = _token_dtype(tokenizer.vocab_size)
    meta = {"tokenizer": cfg.tokenizer, "vocab_size": tokenizer.vocab_size, "dtype": dtype.name}
    if isinstance(tokenizer, CharTokenizer):
        meta["chars"] = tokenizer.chars
    for split, part in (("train", text[:n_train]), ("val", text[n_train:])):
        tokens = _encode(tokenizer, part, dtype, desc=f"tokenizing {cfg.name} {split}")
        sizes = _write_split(
            Path(cfg.dir), split, len(tokens), dtype, cfg.shard_gb, lambda a, b: iter([tokens[a:b]])
        )
        meta |= _split_meta(split, sizes)
    return meta


def _split_meta(split: str, sizes: list[int]) -> dict:
    return {f"{split}_tokens": sum(sizes)} | ({f"{split}_shards": sizes} if len(sizes) > 1 else {})


def document_lengths(tokenized: Any) -> np.ndarray:
    """The `len` column of a tokenized datasets.Dataset as one array. Indexing a numpy-formatted
    dataset by column walks a lazy Column row by row in datasets >= 4 (1.7 s per 40,000 rows
    against 0.01 s; huggingface/datasets#7709)."""
    return tokenized.data.column("len").to_numpy()


def _prepare_from_hf(cfg: DictConfig) -> dict:
    """Tokenize a `datasets` dataset in parallel (num_proc), one EOT token after each document,
    and stream it shard by shard into the bins."""
    import datasets

    if cfg.tokenizer != "gpt2":
        raise DataError(
            f"data.tokenizer={cfg.tokenizer} is not supported for data.source=hf; use gpt2"
        )
    data_files = OmegaConf.to_container(cfg.data_files) if cfg.data_files is not None else None
    splits = datasets.load_dataset(
        cfg.hf_path, cfg.hf_name, data_files=data_files, num_proc=cfg.num_proc
    )
    if cfg.val_split is None:
        split = splits["train"].train_test_split(
            test_size=cfg.val_fraction, seed=2357, shuffle=True
        )
        splits = {"train": split["train"], "val": split["test"]}
    else:
        splits = {"train": splits["train"], "val": splits[cfg.val_split]}

    tokenizer = GPT2Tokenizer()
    text_field = cfg.text_field

    def tokenize(example: dict) -> dict:
        ids = tokenizer.encode(example[text_field]) + [tokenizer.eot]
        return {"ids": ids, "len": len(ids)}

    dtype = _token_dtype(tokenizer.vocab_size)
    meta = {"tokenizer": "gpt2", "vocab_size": tokenizer.vocab_size, "dtype": dtype.name}
    for split, dset in splits.items():
        # datasets caches what map() computed, so a preparation started again reuses it
        tokenized = dset.map(
            tokenize,
            remove_columns=dset.column_names,
            num_proc=cfg.num_proc,
            desc=f"tokenizing {split}",
        )
        # each document's end in the split
        ends = np.cumsum(document_lengths(tokenized), dtype=np.int64)
        rows = tokenized.with_format("numpy")

        def read(start: int, stop: int, split: str = split) -> Iterator[np.ndarray]:
            """Tokens start..stop of the split, a thousand documents at a time."""
            first = int(np.searchsorted(ends, start, side="right"))
            last = int(np.searchsorted(ends, stop - 1, side="right")) + 1 if stop > start else first
            for r in tqdm(
                range(first, last, 1000),
                desc=f"writing {split} tokens {start:,}-{stop:,}",
                unit="kdoc",
                disable=None,
            ):
                ids = np.concatenate(rows[r : min(r + 1000, last)]["ids"])
                offset = int(ends[r - 1]) if r else 0
                yield ids[max(start - offset, 0) : stop - offset]

        meta |= _split_meta(
            split,
            _write_split(
                Path(cfg.dir), split, int(ends[-1]) if len(ends) else 0, dtype, cfg.shard_gb, read
            ),
        )
    return meta


def _source_hash(cfg: DictConfig, text: str | None) -> str:
    """What the prepared bins depend on: the text itself (or, for hub datasets, its address)
    and every setting that changes the tokens."""
    h = hashlib.sha256(
        f"v{FORMAT_VERSION}|{cfg.source}|{cfg.tokenizer}|{cfg.val_fraction}".encode()
    )
    if text is not None:
        h.update(text.encode("utf-8"))
    else:
        keys = ("hf_path", "hf_name", "data_files", "val_split", "text_field")
        h.update(
            json.dumps({k: OmegaConf.to_container(cfg)[k] for k in keys}, sort_keys=True).encode()
        )
    return h.hexdigest()


def _read_meta(directory: Path) -> dict | None:
    try:
        meta = json.loads((directory / "meta.json").read_text())
        for split in ("train", "val"):
            for path, tokens in _split_files(directory, meta, split):
                if path.stat().st_size != tokens * np.dtype(meta["dtype"]).itemsize:
                    return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta


SOURCES = {"shakespeare": _read_shakespeare, "text": _read_text}


PREPARING = "preparing.json"
# The training split's count of each token id: what frequency bins and long-tail losses read.
COUNTS = "train_counts.npy"
COUNT_CHUNK = 2**26  # tokens counted at a time


def count_train(directory: Path, meta: dict) -> np.ndarray:
    """How many times each token id of the vocabulary occurs in the training split."""
    counts = np.zeros(meta["vocab_size"], dtype=np.int64)
    for path, _ in _split_files(directory, meta, "train"):
        tokens = np.memmap(path, dtype=meta["dtype"], mode="r")
        for start in range(0, len(tokens), COUNT_CHUNK):
            chunk = np.asarray(tokens[start : start + COUNT_CHUNK])
            counts += np.bincount(chunk, minlength=len(counts))[: len(counts)]
    return counts


def _write_counts(directory: Path, meta: dict) -> None:
    with atomic_path(directory / COUNTS) as tmp, open(tmp, "wb") as f:
        np.save(f, count_train(directory, meta))


PREPARE_LOCK = ".prepare.lock"


def _start_preparing(directory: Path, source_hash: str) -> None:
    """Record which source is being prepared. Bins left by an interrupted preparation of the
    same source are kept (finished shards are reused); any others are removed first."""
    try:
        same = json.loads((directory / PREPARING).read_text())["source_hash"] == source_hash
    except (OSError, ValueError, KeyError):
        same = False
    if not same:
        for path in directory.glob("*.bin"):
            path.unlink()
        write_json(directory / PREPARING, {"source_hash": source_hash})


@contextmanager
def _preparing_alone(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on the data folder while preparing it: the jobs of a parallel
    sweep that all find the data missing prepare it one after another, the later ones finding
    it ready, instead of deleting each other's files. The OS releases the lock when its holder
    exits, so a killed preparation never blocks the next one."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / PREPARE_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def prepare(cfg: DictConfig, allowed: bool = True) -> dict:
    """Make sure data/<name>/ holds bins for the configured source; returns its meta. With
    `allowed=False` (a rank of a DDP run that does not prepare) data that is missing or stale
    is an error instead."""
    if cfg.source not in (*SOURCES, "hf"):
        raise DataError(f"data.source={cfg.source!r} is not one of {[*SOURCES, 'hf']}")
    if cfg.tokenizer not in ("char", "gpt2"):
        raise DataError(f"data.tokenizer={cfg.tokenizer!r} is not one of ['char', 'gpt2']")
    if not 0 < cfg.val_fraction < 1:
        raise DataError(f"data.val_fraction={cfg.val_fraction} must lie in (0, 1)")
    if not cfg.shard_gb > 0:
        raise DataError(f"data.shard_gb={cfg.shard_gb} must be > 0 (the largest bin file, in GiB)")
    directory = Path(cfg.dir)
    meta = _read_meta(directory)
    try:
        text = SOURCES[cfg.source](cfg) if cfg.source in SOURCES else None
    except DataError:
        # prepared data whose source is gone: usable as it is
        if meta is not None and meta.get("name") == cfg.name:
            log.warning(
                "%s: the source text is unreachable, so the "
                "prepared data is used unchecked against it",
                directory,
            )
            return meta
        raise
    source_hash = _source_hash(cfg, text)
    if meta is not None and meta.get("source_hash") == source_hash:
        return meta
    if not allowed:
        raise DataError(
            f"{directory} holds no prepared {cfg.name} data for this "
            "process, and another rank prepared it: if the nodes of this "
            "run do not share a filesystem, set data.shared_filesystem=false"
        )

    try:
        with _preparing_alone(directory):
            meta = _read_meta(directory)
            if meta is not None and meta.get("source_hash") == source_hash:
                return meta  # prepared by another run while this one waited for the lock
            log.info("preparing %s in %s", cfg.name, directory)
            # meta.json is invalid until the new bins are complete
            (directory / "meta.json").unlink(missing_ok=True)
            _start_preparing(directory, source_hash)
            meta = _prepare_from_text(cfg, text) if text is not None else _prepare_from_hf(cfg)
            meta = {"name": cfg.name, "source_hash": source_hash} | meta
            _write_counts(directory, meta)
            write_json(directory / "meta.json", meta)
            (directory / PREPARING).unlink()
    except OSError as e:
        raise DataError(
            f"data.dir={directory} cannot be written ({e.strerror or e}: "
            f"{e.filename or directory}); give data.dir=<a writable "
            "folder> (or set NANOLAB_DATA_DIR) to prepare the data there"
        ) from None
    log.info(
        "%s: %d train / %d val tokens, vocabulary %d",
        cfg.name,
        meta["train_tokens"],
        meta["val_tokens"],
        meta["vocab_size"],
    )
    return meta


# --- prepared data for a trained model (read only) ------------------------------------------

_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def data_root() -> Path:
    """The project's own data root: NANOLAB_DATA_DIR, else ./data."""
    return Path(os.environ.get("NANOLAB_DATA_DIR") or "data")


def same_vocabulary(found: dict, wanted: dict) -> str | None:
    """None when prepared data with meta `found` has the tokens of `wanted` (a checkpoint's
    data meta), else what differs."""
    tokenizer, trained_on = found.get("tokenizer"), wanted.get("tokenizer")
    if tokenizer != trained_on:
        return f"{tokenizer} tokens where the model was trained on {trained_on} tokens"
    chars, trained_chars = found.get("chars") or [], wanted.get("chars") or []
    if trained_on == "char" and chars != trained_chars:
        return f"another character set ({len(chars)} characters, the model's {len(trained_chars)})"
    if found.get("vocab_size") != wanted.get("vocab_size"):
        return (
            f"a vocabulary of {found.get('vocab_size')} tokens, "
            f"the model's {wanted.get('vocab_size')}"
        )
    return None


def trained_data(wanted: dict, given: str | None, recorded: str | None, what: str) -> TokenData:
    """The prepared data of a trained model whose data had meta `wanted`, read only: from
    `given` (the user's data.dir) alone when set; otherwise from `recorded` (where the run
    prepared it, as its checkpoint says) or the project's data root (NANOLAB_DATA_DIR or
    ./data, under the data's name). Nothing is prepared, downloaded, written or deleted: the
    checkpoint's own config is information, never an instruction. The data must hold the
    model's vocabulary; `what` names the model in messages."""
    if given is not None:
        candidates = [Path(given)]
    else:
        name = wanted.get("name")
        plain = isinstance(name, str) and _PLAIN_NAME.fullmatch(name) is not None
        candidates = [Path(recorded)] if recorded else []
        candidates += [data_root() / name] if plain else []
    tried = []
    for directory in dict.fromkeys(candidates):
        meta = _read_meta(directory)
        differs = (
            "no complete prepared data (meta.json, train and val bins)"
            if meta is None
            else same_vocabulary(meta, wanted)
        )
        if differs is None:
            if meta.get("source_hash") != wanted.get("source_hash"):
                log.warning(
                    "%s holds other text than %s was trained on (data hash %s, the model's %s)",
                    directory,
                    what,
                    str(meta.get("source_hash"))[:12],
                    str(wanted.get("source_hash"))[:12],
                )
            return TokenData.read(directory, meta)
        tried.append(f"{directory}: {differs}")
    if given is not None:
        raise DataError(
            f"data.dir={given} does not fit {what}: "
            f"{tried[0].split(': ', 1)[1]}; give the folder its run prepared"
        )
    raise DataError(
        f"no prepared data for {what} (data {wanted.get('name')!r}, "
        f"{wanted.get('tokenizer')} tokens) was found"
        + (f" ({'; '.join(tried)})" if tried else "")
        + ": give data.dir=<the folder its run prepared>, or prepare it with a training run on "
        "the same data"
    )


@dataclass
class TokenData:
    """A prepared dataset: both splits as read-only memory maps, and its meta."""

    train: np.ndarray | ShardedTokens
    val: np.ndarray | ShardedTokens
    meta: dict
    # The training targets when they differ from the training tokens (data.label_noise):
    # aligned with `train`, read for targets only, so a corrupted target is never an input.
    train_targets: np.ndarray | None = None
    directory: Path | None = None  # where it was read from
    _counts: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def load(cls, cfg: DictConfig, prepare_missing: bool = True) -> TokenData:
        """The prepared dataset, preparing it first when needed (and `prepare_missing`)."""
        return cls.read(Path(cfg.dir), prepare(cfg, allowed=prepare_missing))

    @classmethod
    def read(cls, directory: Path, meta: dict | None = None) -> TokenData:
        """The data prepared in `directory` (meta.json, train and val bins), whatever its source."""
        meta = meta or _read_meta(directory)
        if meta is None:
            raise DataError(
                f"{directory} holds no complete prepared data (meta.json, train and "
                "val bins): give the folder a nanolab run prepared, e.g. "
                "data/shakespeare_char (any run on data=shakespeare_char prepares it)"
            )
        splits = {}
        for split in ("train", "val"):
            maps = [
                np.memmap(path, dtype=meta["dtype"], mode="r")
                for path, _ in _split_files(directory, meta, split)
            ]
            splits[split] = maps[0] if len(maps) == 1 else ShardedTokens(maps)
        return cls(meta=meta, directory=directory, **splits)

    @property
    def vocab_size(self) -> int:
        return self.meta["vocab_size"]

    def train_counts(self) -> np.ndarray:
        """How many times each token id occurs in the whole training split (before
        data.train_tokens and label noise): stored by preparation, counted here (and not
        written: reading never writes) for data prepared before nanolab stored it."""
        if self._counts is None:
            stored = self.directory / COUNTS if self.directory is not None else None
            try:
                counts = np.load(stored, allow_pickle=False)
                ok = counts.shape == (self.vocab_size,)
            except (OSError, ValueError, TypeError):
                ok = False
            if not ok:
                if self.directory is None:
                    raise DataError("these tokens were not read from prepared data: no counts")
                log.info("%s has no %s: counting the training tokens", self.directory, COUNTS)
                counts = count_train(self.directory, self.meta)
            self._counts = counts
        return self._counts

    def limit_train(self, tokens: int | None) -> None:
        """Keep only the first `tokens` training tokens (`data.train_tokens`): a fixed subset,
        the same for every seed and model of a sweep. None keeps them all."""
        if tokens is None:
            return
        if tokens > len(self.train):
            raise DataError(
                f"data.train_tokens={tokens} is more than the "
                f"{len(self.train)} training tokens of data={self.meta['name']}"
            )
        self.train = (
            self.train[:tokens]
            if isinstance(self.train, np.ndarray)
            else self.train[np.arange(tokens)]
        )

    def add_label_noise(self, fraction: float, seed: int) -> None:
        """Replace round(fraction·n) of the n training targets (every training token but the
        first) by a uniformly drawn other token (`data.label_noise`), at positions drawn from
        `seed` alone: the same noisy set for every model and seed of a sweep. Inputs and the
        val split stay clean."""
        if not fraction:
            return
        if self.vocab_size < 2:
            raise DataError(
                f"data.label_noise={fraction} needs at least two tokens to replace "
                f"a target by another; data={self.meta['name']} has a vocabulary "
                f"of {self.vocab_size}: use data.label_noise=0 or more varied text"
            )
        rng = np.random.default_rng(seed)
        targets = np.array(self.train)
        positions = 1 + rng.choice(
            len(targets) - 1, size=round(fraction * (len(targets) - 1)), replace=False
        )
        # never 0: the new token differs
        shift = rng.integers(1, self.vocab_size, size=len(positions))
        targets[positions] = (targets[positions].astype(np.int64) + shift) % self.vocab_size
        self.train_targets = targets

    def check_block_size(self, block_size: int) -> None:
        """Both splits must hold at least one (input, target) window of block_size tokens."""
        for split in ("train", "val"):
            if len(getattr(self, split)) <= block_size:
                raise DataError(
                    f"the {split} split of data={self.meta['name']} has "
                    f"{len(getattr(self, split))} tokens, too few for "
                    f"model.block_size={block_size}; lower model.block_size or use more data"
                )
