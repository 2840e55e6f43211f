"""A sweep's comparison view on W&B, as code (`python -m nanolab.compare <sweep>
--wandb-workspace`).

The saved workspace shows the sweep's W&B group only, its runs grouped by the keys the sweep
varies (so seeds are averaged, with a band of one standard deviation), line panels of calibrated
val/ce, val/acc and train/loss against tokens seen, and a runs table with the columns of
nanolab.compare's report. It is built with the `wandb-workspaces` package (`pip install
'nanolab[workspaces]'`). Without network or an API key the definition is written to a file
and one line says how to create it later.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanolab import ConfigError
from nanolab.atomic import write_json
from nanolab.tracking import resolve_wandb_mode

# (metric, y-axis title) of the line panels, all against tokens seen.
PANELS = [
    ("val/ce_calibrated", "calibrated val/ce (nats/token)"),
    ("val/ce", "val/ce (nats/token)"),
    ("val/acc", "val/acc (accuracy)"),
    ("train/loss", "train/loss (each run's own objective)"),
]
# The runs table: the report's columns, as W&B names the summary (define_metric keeps the
# last and the best value of each evaluated metric).
COLUMNS = [
    "summary:val/ce.last",
    "summary:val/ce.min",
    "summary:val/ce_calibrated.last",
    "summary:val/temperature",
    "summary:val/acc.last",
    "summary:val/ece.last",
    "summary:perf/tokens_per_s",
    "summary:wall_time_s",
    "summary:status",
]


@dataclass
class Sweep:
    """What the workspace needs to know about a sweep: where its runs are on W&B and what varies."""

    entity: str | None
    project: str
    group: str
    group_by: list[str]  # W&B config keys, e.g. loss.name, optim.lr


def config_key(key: str, group_choices: set[str]) -> str:
    """The W&B config key holding an override's value: a config group (loss=mse) by its `name`."""
    return f"{key}.name" if key in group_choices else key


def build_workspace(sweep: Sweep, entity: str) -> Any:
    """The wandb_workspaces Workspace of `sweep`, saved under `entity`."""
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
        from wandb_workspaces import expr
    except ImportError:
        raise ConfigError(
            "--wandb-workspace needs the wandb-workspaces "
            "package: pip install 'nanolab[workspaces]'"
        ) from None

    panels = [
        wr.LinePlot(
            title=metric,
            x="tokens",
            y=[metric],
            title_x="tokens seen",
            title_y=title,
            groupby_aggfunc="mean",
            groupby_rangefunc="stddev",
        )
        for metric, title in PANELS
    ]
    return ws.Workspace(
        entity=entity,
        project=sweep.project,
        name=f"nanolab: {sweep.group}",
        settings=ws.WorkspaceSettings(x_axis="tokens", max_runs=100),
        runset_settings=ws.RunsetSettings(
            filters=[expr.Metric("Group") == sweep.group],
            groupby=[expr.Config(key) for key in sweep.group_by],
            pinned_columns=COLUMNS,
        ),
        sections=[ws.Section(name="Comparison", panels=panels, is_open=True)],
    )


def definition(workspace: Any) -> dict[str, Any]:
    """The workspace as the JSON W&B stores (its view spec)."""
    return json.loads(workspace._to_model().model_dump_json(by_alias=True, exclude_none=True))


def publish(sweep: Sweep, out: Path, command: str, offline_runs: str) -> str:
    """Save the workspace on W&B when online with credentials; otherwise write its definition
    to out/wandb_workspace.json. Returns the line to print: the URL, or how to publish later
    (`offline_runs`: the runs' offline W&B folders, as `wandb sync` takes them)."""
    import wandb

    online = resolve_wandb_mode("auto") == "online"
    entity = sweep.entity
    if online and entity is None:
        try:
            entity = wandb.Api().default_entity
        except Exception:  # no network: the definition goes to a file
            online = False
    workspace = build_workspace(sweep, entity or "<your W&B entity>")
    path = out / "wandb_workspace.json"
    write_json(path, definition(workspace))
    if online:
        try:
            saved = workspace.save()
            return f"W&B workspace: {saved.url}"
        except Exception as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            return (
                f"W&B workspace not saved ({reason}); its definition is "
                f"in {path}: run `{command}` again once W&B is reachable"
            )
    return (
        f"W&B is offline: the workspace's definition is in {path}. To create it, upload the runs "
        f"(`wandb sync {offline_runs}`) and run `{command}` again with W&B online"
    )
