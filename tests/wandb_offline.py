"""Read an offline W&B run back from its .wandb file (tests only).

The file is a 7-byte header (":W&B", magic 0xBEE1, version 0) followed by a leveldb-style log:
32 KiB blocks of records, each with a 7-byte header (crc32, little-endian length, type) and a
payload that is one serialized wandb `Record` protobuf, possibly split across blocks.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(data: bytes):
    assert data[:4] == b":W&B", "not a .wandb file"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < 7:  # block trailer padding
            pos += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
        elif kind == 0 and length == 0:  # zero padding at the end of a block
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0


def read_run(wandb_file: Path) -> dict:
    """{"id", "group", "name", "tags", "config": {key: value}, "history": [{key: value}], "summary": {...}}"""
    run: dict = {"config": {}, "history": [], "summary": {}}
    for payload in _payloads(Path(wandb_file).read_bytes()):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run |= {"id": r.run_id, "group": r.run_group, "name": r.display_name, "tags": list(r.tags)}
            for item in r.config.update:
                run["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                run["config"][item.key] = json.loads(item.value_json)
        elif kind == "history":
            row = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            run["history"].append(row)
        elif kind == "summary":
            for item in record.summary.update:
                key = item.key or "/".join(item.nested_key)
                run["summary"][key] = json.loads(item.value_json)
    return run


def offline_runs(root: Path) -> list[dict]:
    """Every offline run below root, read back."""
    return [read_run(f) for f in sorted(Path(root).rglob("offline-run-*/run-*.wandb"))]
