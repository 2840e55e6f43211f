"""Every run behind docs/optimizer_comparison.md: eight optimizers tuned at the budget they are
compared at (the quick start: nano model, shakespeare_char, 2000 steps, cosine), then compared
per step and per second.

    python scripts/optimizer_study.py [--root multirun/optimizer_study]

1. Weight decay, seed 1337: three values of lr x weight_decay, the share of each weight decayed
   per step at the peak lr (0, 4e-4, 1.6e-3; 4x further while the best is the largest),
   each at the lr the earlier 1000-step sweep chose (LR0). SGD's decay is coupled (added to
   the gradient) and momentum 0.9 carries a gradient into about 10 steps, so its weight_decay
   is share / (10 lr). Muon's AdamW part (embeddings and head) decays the same share; its lr,
   optim.adamw_lr, is swept at 1e-3, 2e-3 and 4e-3 (at no decay; 2x further while the best is
   at an end).
2. The lr at the chosen share: LR0, half and twice it, then further out by factors of 2 while
   the best is at an end (at most three more). The share stays fixed as the lr moves.
3. The chosen settings with two more seeds (1338, 1339) beside the tuning run (1337).
4. Per second (per_second.md): each optimizer's median training step time over those runs
   (two at a time, as they ran), its seconds to reach val/ce TARGET (the steps interpolated
   between evaluations, times that step time) and its final calibrated val/ce against its
   training seconds; then the ranks per step and per second, ties named (seeds that overlap).

The score is the final calibrated val/ce (20 fixed val batches). Two one-thread runs at a time
(nanolab.study); a run whose summary.json exists is kept, so the script resumes. It writes
chosen.json, per_second.md and the reports of nanolab.compare (tuning/, final/) under the root.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from nanolab.report import mean_std, table_markdown
from nanolab.results import Target, reach, read_records
from nanolab.study import Settings, Study, compare, final_score, run_name

OPTIMS = ["sgd", "adamw", "adafactor", "muon", "lion", "shampoo", "soap", "schedulefree_adamw"]
LR0 = {
    "sgd": 0.3,
    "adamw": 4e-3,
    "adafactor": 0.1,
    "muon": 0.02,
    "lion": 1e-3,
    "shampoo": 1e-2,
    "soap": 1e-2,
    "schedulefree_adamw": 1e-2,
}
SHARES = [0.0, 4e-4, 1.6e-3]
MUON_ADAMW_LRS = [1e-3, 2e-3, 4e-3]
SEEDS = [1338, 1339]
STEPS = 2000
TARGET = 2.0  # val/ce: SGD, the slowest per step, reaches it, so every optimizer is timed


def settings_for(optim: str, lr: float, share: float, adamw_lr: float = 2e-3) -> Settings:
    """An optimizer at lr whose weights decay by `share` per step at the peak lr."""
    settings: Settings = {
        "optim": optim,
        "optim.lr": lr,
        "optim.weight_decay": share / ((10 if optim == "sgd" else 1) * lr),
    }
    if optim == "muon":
        settings |= {"optim.adamw_lr": adamw_lr, "optim.adamw_weight_decay": share / adamw_lr}
    return settings


def median_step_ms(runs: list[Path]) -> float:
    rows = [json.loads(line) for run in runs for line in (run / "metrics.jsonl").open()]
    return statistics.median(r["perf/step_ms"] for r in rows if "perf/step_ms" in r)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("multirun/optimizer_study"))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    tune = Study(parser.parse_args().root, common=["seed=1337"])
    root = tune.root
    # 1. weight decay (Muon: and its AdamW lr) at the starting lr; every first grid in one
    # batch, so that both cores stay busy
    by_share = {o: (lambda c, o=o: settings_for(o, LR0[o], c)) for o in OPTIMS}
    muon_adamw = lambda a: settings_for("muon", LR0["muon"], 0.0, a)  # noqa: E731
    tune.grid("tune", [by_share[o](c) for o in OPTIMS for c in SHARES])
    tune.grid("tune", list(map(muon_adamw, MUON_ADAMW_LRS)))
    grids = {o: [LR0[o] * f for f in (0.5, 1, 2)] for o in OPTIMS}

    def tune_one(o: str) -> tuple[Settings, list[str]]:
        """Stage 1's choice for one optimizer, then its lr (stage 2) at that weight decay: the
        chosen settings and the optimizer's row of tuning.md."""
        by_decay = tune.search("tune", by_share[o], SHARES, factor=4)
        share = by_decay.best
        adamw_lr = 2e-3
        if o == "muon":
            adamw_lr = tune.search("tune", muon_adamw, MUON_ADAMW_LRS, factor=2).best
        by_lr = tune.search(
            "tune", lambda lr: settings_for(o, lr, share, adamw_lr), grids[o], factor=2
        )
        chosen = by_lr.settings
        row = [o, f"{LR0[o]:.3g}", by_decay.cells(), by_lr.cells()]
        picked = ", ".join(
            f"{k.removeprefix('optim.')} {v:.3g}" for k, v in chosen.items() if k != "optim"
        )
        return chosen, row + [picked]

    # the optimizers' searches at once, sharing the two slots, so that no core waits for one
    # optimizer's extension
    with ThreadPoolExecutor(len(OPTIMS)) as pool:
        tuned = dict(zip(OPTIMS, pool.map(tune_one, OPTIMS)))
    chosen = {o: settings for o, (settings, _) in tuned.items()}
    head = ["optimizer", "lr0", "decay share at lr0: val/ce", "lr at that share: val/ce", "chosen"]
    (root / "tuning.md").write_text(table_markdown(head, [row for _, row in tuned.values()]) + "\n")
    muon = tune.search("tune", muon_adamw, MUON_ADAMW_LRS, factor=2)
    with (root / "tuning.md").open("a") as f:
        f.write(f"\nMuon's adamw_lr at no decay: {muon.cells()}\n")
    print((root / "tuning.md").read_text())
    for o in OPTIMS:
        print(o, run_name(chosen[o]), f"{final_score(root / 'tune' / run_name(chosen[o])):.4f}")
    (root / "chosen.json").write_text(json.dumps(chosen, indent=1) + "\n")

    # 3. more seeds at the chosen settings
    final = {
        o: [root / "tune" / run_name(chosen[o])] + [root / "final" / f"{o}_seed{s}" for s in SEEDS]
        for o in OPTIMS
    }
    jobs = [(run, chosen[o] | {"seed": s}) for o in OPTIMS for run, s in zip(final[o][1:], SEEDS)]
    Study(root).train_all(jobs)
    compare(sum(final.values(), []), root / "final")
    compare(sorted((root / "tune").iterdir()), root / "tuning")

    # 4. per second
    (root / "per_second.md").write_text(per_second(final))
    print((root / "per_second.md").read_text())


def seconds_to_target(run: Path, step_ms: float) -> float:
    """Training seconds to the first val/ce <= TARGET (nanolab.results.reach: the step
    interpolated between the evaluations before and at it); nan when none reaches it."""
    point = reach(read_records(run / "metrics.jsonl"), Target("val/ce", TARGET))
    return math.nan if point is None else point[0] * step_ms / 1000


def ranks(values: dict[str, list[float]]) -> str:
    """The optimizers from best (lowest) to worst by mean, each step written "<" where every
    seed of the one is below every seed of the next (3 seeds against 3: an exact one-sided
    permutation p of 1/20), "=" (a tie) where their seeds overlap."""
    order = sorted(values, key=lambda o: statistics.mean(values[o]))
    text = order[0]
    for a, b in zip(order, order[1:]):
        text += f" {'<' if max(values[a]) < min(values[b]) else '='} {b}"
    return text


def per_second(final: dict[str, list[Path]]) -> str:
    """The per-second table (step time, seconds to TARGET, final calibrated val/ce and the
    training seconds it took), then the ranks per step and per second, ties named."""
    body, per_step, to_target = [], {}, {}
    for o, runs in final.items():
        ms = median_step_ms(runs)
        per_step[o] = [final_score(run) for run in runs]
        to_target[o] = [seconds_to_target(run, ms) for run in runs]
        body.append(
            [
                o,
                f"{ms:.1f}",
                mean_std(to_target[o], ".1f"),
                mean_std(per_step[o], ".3f"),
                f"{STEPS * ms / 1000:.0f}",
            ]
        )
    head = [
        "optimizer",
        "ms/step",
        f"s to val/ce {TARGET}",
        "final val/ce calibrated",
        "training s",
    ]
    reached = {o: v for o, v in to_target.items() if not any(map(math.isnan, v))}
    return (
        table_markdown(head, sorted(body, key=lambda row: float(row[2].split()[0] or "inf")))
        + f"\n\nPer step (final calibrated val/ce): {ranks(per_step)}\n"
        + f"Per second (seconds to val/ce {TARGET}, every seed there): {ranks(reached)}\n"
    )


if __name__ == "__main__":
    main()
