"""The tables of docs/sparsity.md from the prune.csv files scripts/sparsity_study.sh wrote.

    python scripts/sparsity_report.py multirun/sparsity 2000 docs/sparsity/accuracy.png \
        > docs/sparsity/tables.md
    python scripts/sparsity_report.py docs/sparsity   # the same tables from the committed reports

docs/sparsity/ keeps every prune.csv (prune/, measure/) and near_zero.csv of the study.

Every accuracy cell is the mean ± standard deviation over the seeds (n given) of the whole-split
val metrics nanolab.prune computed; the measurement table is seed 1337's models, timed one at a
time by nanolab.prune measure=true.
"""

from __future__ import annotations

import csv
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from nanolab.report import mean_std, table_markdown


def read(folder: Path) -> dict[tuple[str, str], list[dict[str, str]]]:
    """(run, method) -> the rows of every seed's prune.csv, each with its seed."""
    rows = defaultdict(list)
    for path in sorted(folder.glob("*/prune.csv")):
        run, method, seed = path.parent.name.rsplit("-", 2)
        with open(path) as f:
            rows[run, method] += [{**r, "seed": seed} for r in csv.DictReader(f)]
    return rows


def cells(rows: list[dict[str, str]], amount: str, key: str, digits: int = 3) -> str:
    values = [float(r[key]) for r in rows if float(r["amount"]) == float(amount) and r.get(key)]
    return mean_std(values, f".{digits}f")


def nonzero(rows: list[dict[str, str]], amount: str) -> str:
    values = {int(r["nonzero_params"]) for r in rows if float(r["amount"]) == float(amount)}
    if len(values) < 2:
        return "".join(f"{v:,}" for v in values)
    return f"{min(values):,}-{max(values):,}"


def seeds(rows: list[dict[str, str]]) -> int:
    return len({r["seed"] for r in rows})


def scored(rows: list[dict[str, str]], amount: str, pruned: str = "show") -> list[str]:
    """A table row's tail: non-zero params, val/ce right after pruning (pruned: show, blank or
    omit), the final val/ce and accuracy, and the number of seeds."""
    right_after = {"show": [cells(rows, amount, "pruned/val/ce")], "blank": [""], "omit": []}
    return [
        nonzero(rows, amount),
        *right_after[pruned],
        cells(rows, amount, "val/ce"),
        cells(rows, amount, "val/acc"),
        str(seeds(rows)),
    ]


def accuracy(rows: dict, steps: int) -> str:
    """Unstructured sparsity: one-shot, gradual and IMP against the dense model."""
    dense = rows["dense128", "asis"]
    oneshot, imp = rows["dense128", "oneshot"], rows["dense128", "imp"]
    ft, rewind = steps // 4, steps // 20
    head = ["method", "sparsity", "training steps", "non-zero params"]
    head += ["val/ce right after pruning", "val/ce", "val acc", "n"]
    control = rows["dense128", "ftcontrol"]
    body = [
        ["dense", "0", f"{steps}", *scored(dense, "0", "blank")],
        ["dense + fine-tune (control)", "0", f"{steps} + {ft}", *scored(control, "0", "blank")],
    ]
    for i, amount in enumerate(("0.5", "0.75", "0.9")):
        gradual = rows[f"gradual{round(float(amount) * 100)}", "asis"]
        budget = f"{steps} + {i + 1} × {steps - rewind}"
        body += [
            ["one-shot + fine-tune", amount, f"{steps} + {ft}", *scored(oneshot, amount)],
            ["gradual (Zhu & Gupta)", amount, f"{steps}", *scored(gradual, "0", "blank")],
            [f"IMP, round {i + 1}", amount, budget, *scored(imp, amount)],
        ]
    return table_markdown(head, body)


def structured(rows: dict, steps: int) -> str:
    """Structured against unstructured one-shot pruning of the same dense models, and the
    group-lasso runs pruned structurally."""
    head = ["model", "pruned", "fraction of the linear weights removed", "non-zero params"]
    head += ["val/ce right after pruning", f"val/ce (pruned: after {steps // 4} fine-tuning steps)"]
    head += ["val acc", "n"]
    body = []
    for run, label in (
        ("dense128", "dense"),
        ("glasso_1e-4", "group lasso 1e-4"),
        ("glasso_1e-3", "group lasso 1e-3"),
    ):
        body.append([label, "nothing (as trained)", "0", *scored(rows[run, "asis"], "0", "blank")])
        for amount in ("0.25", "0.5", "0.75"):
            pruned = f"heads and neurons {amount}"
            body.append([label, pruned, amount, *scored(rows[run, "structured"], amount)])
    for amount in ("0.5", "0.75"):
        oneshot = rows["dense128", "oneshot"]
        body.append(["dense", "weights by magnitude", amount, *scored(oneshot, amount)])
    return table_markdown(head, body)


def near_zero(folder: Path, run: str) -> list[float]:
    """Per seed, the fraction of the blocks' linear weights of `run`'s last.pt below 1e-3 in
    magnitude (what an L1 penalty drives towards zero without reaching it), kept in
    near_zero.csv so that the tables regenerate from the committed reports alone."""
    saved = folder / "near_zero.csv"
    checkpoints = sorted(folder.glob(f"train/{run}-s*/last.pt"))
    if not checkpoints:
        with open(saved) as f:
            return [float(r["fraction"]) for r in csv.DictReader(f) if r["run"] == run]
    import torch

    fractions = []
    for path in checkpoints:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["model"]
        weights = [w for name, w in state.items() if ".h." in name and w.dim() == 2]
        small = sum(int((w.abs() < 1e-3).sum()) for w in weights)
        fractions.append(small / sum(w.numel() for w in weights))
    rows = []
    if saved.is_file():
        with open(saved) as f:
            rows = [r for r in csv.DictReader(f) if r["run"] != run]
    rows += [
        {"run": run, "seed": p.parent.name, "fraction": x} for p, x in zip(checkpoints, fractions)
    ]
    with open(saved, "w", newline="") as f:
        writer = csv.DictWriter(f, ["run", "seed", "fraction"])
        writer.writeheader()
        writer.writerows(rows)
    return fractions


def regularized(rows: dict, folder: Path) -> str:
    """The L1 runs as trained and after one-shot pruning, against the plain dense run."""
    head = [
        "trained with",
        "linear weights with \\|w\\| < 1e-3 as trained",
        "val/ce as trained",
        "val/ce pruned to 0.5",
        "0.75",
        "0.9",
        "(each after fine-tuning; right after pruning at 0.9)",
        "n",
    ]
    body = []
    for run, label in (("dense128", "no penalty"), ("l1_1e-5", "L1 1e-5"), ("l1_1e-4", "L1 1e-4")):
        asis, oneshot = rows[run, "asis"], rows[run, "oneshot"]
        body.append(
            [
                label,
                mean_std(near_zero(folder, run)),
                cells(asis, "0", "val/ce"),
                *(cells(oneshot, a, "val/ce") for a in ("0.5", "0.75", "0.9")),
                cells(oneshot, "0.9", "pruned/val/ce"),
                str(seeds(oneshot)),
            ]
        )
    return table_markdown(head, body)


def large_sparse(rows: dict) -> str:
    """Zhu & Gupta's question: at equal non-zero parameters, large sparse or small dense?"""
    head = ["model", "width", "sparsity of the linear weights", "non-zero params"]
    head += ["val/ce", "val acc", "n"]
    body = [
        [label, width, sparsity, *scored(rows[run, "asis"], "0", "omit")]
        for run, label, width, sparsity in (
            ("dense64", "small dense", "64", "0"),
            ("gradual75", "large sparse (gradual)", "128", "0.75"),
            ("wide256_gradual9375", "larger, sparser (gradual)", "256", "0.9375"),
            ("dense128", "dense, for scale", "128", "0"),
        )
    ]
    return table_markdown(head, body)


def measured(folder: Path) -> str:
    """Memory and time of seed 1337's models."""
    head = [
        "model",
        "weights",
        "non-zero params",
        "memory kB",
        "disk kB",
        "as sparse CSR kB",
        "ms / forward (16 × 64 tokens)",
        "sampling tok/s, batch 1",
        "batch 16",
        "val/ce of the model timed (no fine-tuning)",
    ]
    body = []
    for name in ("dense128", "structured", "gradual90", "wide256_gradual9375", "dense64"):
        path = folder / name / "prune.csv"
        if not path.is_file():
            continue
        with open(path) as f:
            for r in csv.DictReader(f):
                label = {
                    "dense128": "dense 128"
                    if float(r["amount"]) == 0
                    else f"one-shot {r['amount']}",
                    "structured": f"structured {r['amount']}",
                    "gradual90": "gradual 0.9",
                    "wide256_gradual9375": "width 256, gradual 0.9375",
                    "dense64": "dense 64",
                }[name]
                body.append(
                    [
                        label,
                        r["weights"],
                        f"{int(r['nonzero_params']):,}",
                        f"{float(r['memory_bytes']) / 1000:,.0f}",
                        f"{float(r['disk_bytes']) / 1000:,.0f}",
                        f"{float(r['csr_disk_bytes']) / 1000:,.0f}",
                        f"{float(r['forward_ms']):.2f}",
                        f"{float(r['sample_tok_s_b1']):,.0f}",
                        f"{float(r['sample_tok_s_batched']):,.0f}",
                        f"{float(r['val/ce']):.4f}",
                    ]
                )
    return table_markdown(head, body)


def plot(rows: dict, path: Path) -> None:
    """val/ce against the fraction of linear weights removed, per method, mean and spread
    over the seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    # each curve: (fraction removed, the reports, the amount of their rows to read)
    unstructured = ("0.5", "0.75", "0.9")
    curves = {
        "one-shot + fine-tune": [(a, rows["dense128", "oneshot"], a) for a in unstructured],
        "gradual (Zhu & Gupta)": [
            (a, rows[f"gradual{round(float(a) * 100)}", "asis"], "0") for a in unstructured
        ],
        "IMP with rewinding": [(a, rows["dense128", "imp"], a) for a in unstructured],
        "structured (heads, neurons) + fine-tune": [
            (a, rows["dense128", "structured"], a) for a in ("0.25", "0.5", "0.75")
        ],
    }
    for label, points in curves.items():
        values = [
            [float(r["val/ce"]) for r in rs if float(r["amount"]) == float(k)]
            for _, rs, k in points
        ]
        ax.errorbar(
            [float(x) for x, _, _ in points],
            [statistics.mean(v) for v in values],
            yerr=[statistics.stdev(v) if len(v) > 1 else 0.0 for v in values],
            marker="o",
            capsize=3,
            label=label,
        )
    dense = [float(r["val/ce"]) for r in rows["dense128", "asis"]]
    ax.axhline(statistics.mean(dense), color="gray", ls="--", label="dense")
    ax.set_xlabel("fraction of the linear weights removed")
    ax.set_ylabel("val/ce, whole val split (nats/char)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(folder: Path, steps: int = 2000, png: Path | None = None) -> None:
    rows = read(folder / "prune")
    print(f"## Unstructured sparsity\n\n{accuracy(rows, steps)}\n")
    print(f"## Structured and unstructured\n\n{structured(rows, steps)}\n")
    print(f"## L1 before magnitude pruning\n\n{regularized(rows, folder)}\n")
    print(f"## Large sparse against small dense\n\n{large_sparse(rows)}\n")
    print(f"## Memory and time (seed 1337)\n\n{measured(folder / 'measure')}")
    if png:
        plot(rows, png)


if __name__ == "__main__":
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    main(Path(sys.argv[1]), steps, Path(sys.argv[3]) if len(sys.argv) > 3 else None)
