"""Read an offline W&B run back with wandb's own reader, `wandb leet inspect --json` (tests
only)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def read_run(wandb_file: Path) -> dict:
    """{"id", "group", "name", "tags", "config", "history": [row], "summary", "metrics":
    [definition], "files": [path], "artifacts"}
    of one .wandb file (one segment of a run: a resumed run writes one file per segment)."""
    wandb_cli = Path(sys.executable).with_name("wandb")
    out = subprocess.run(
        [str(wandb_cli), "leet", "inspect", "--json", str(wandb_file)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    run: dict = {
        "config": {},
        "history": [],
        "summary": {},
        "metrics": [],
        "files": [],
        "artifacts": [],
    }
    for line in out.splitlines():
        record = json.loads(line)
        kind = record["type"]
        if kind == "run":
            r = record["run"]
            run |= {
                "id": r["run_id"],
                "group": r.get("run_group", ""),
                "name": r["display_name"],
                "tags": r.get("tags", []),
            }
            run["config"] |= r.get("config", {}).get("update", {})
        elif kind == "config":
            run["config"] |= record["config"].get("update", {})
        elif kind == "history":
            run["history"].append(record["history"]["item"])
        elif kind == "summary":
            run["summary"] |= record["summary"].get("update", {})
        elif kind == "metric":
            run["metrics"].append(record["metric"])
        elif kind == "artifact":
            run["artifacts"].append(
                {
                    "type": record["artifact"]["type"],
                    "aliases": record["artifact"].get("aliases", []),
                    "files": [f["path"] for f in record["artifact"]["manifest"]["contents"]],
                }
            )
        elif kind == "files":
            run["files"] += [f["path"] for f in record["files"].get("files", [])]
    run["config"].pop("_wandb", None)
    return run


def offline_runs(root: Path) -> list[dict]:
    """Every offline run segment below root, read back, oldest first."""
    return [read_run(f) for f in sorted(Path(root).rglob("offline-run-*/run-*.wandb"))]
