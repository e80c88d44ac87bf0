"""A sweep's W&B workspace view, built from code with W&B's wandb-workspaces: `python -m dpo_lab dashboard SWEEP_DIR
[--push]`, and at the end of a sweep that logged online (wandb.dashboard).

The view shows the sweep's wandb group only, its runs grouped by the swept keys (sweep.json; a swept seed is left
out, so seeds group as replicates), in sections: the objective over steps (mean ± standard error per group), the
eval metrics, the checkpoint-sample metrics and tables, the sweep itself (parallel coordinates from the swept keys
to the objective, parameter importance, a run comparer of the differing config keys) and speed. Every metric and
table a panel names is one the runs logged, read back from their run files (`wandb leet inspect`); one they did not
log is left out with a warning. Without --push the view's spec (the library's model as JSON) goes to
<sweep>/dashboard.json with the commands that sync the runs and push it; --push saves it (a logged-in wandb: online,
or a server at WANDB_BASE_URL) and records its URL in sweep.json and report.md.
"""

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Set, Tuple

from dpo_lab import files, quality, tracking
from dpo_lab.errors import UserError

log = logging.getLogger(__name__)

SPEC = "dashboard.json"  # in the sweep dir
X = "train/global_step"  # every metric's step (tracking.start_run's define_metric)
# The panels of each section, as (title, metric keys): the keys a run may log; what the runs did not is left out.
EVAL = [
    ("Held-out preference accuracy", ["eval/rewards/accuracies"]),
    ("Log-ratio margin (beta-free)", ["eval/logratios/margins", "eval/logps/margins"]),
    ("Reward margin", ["eval/rewards/margins"]),
    ("Eval loss", ["eval/loss"]),
]
SAMPLES = [
    ("Reward of the answers", ["samples/reward"]),
    ("KL from the start", ["samples/kl"]),
    ("Task score", ["samples/task_score"]),
    ("Repetition", ["samples/repetition"]),
]
SPEED = [
    ("Tokens per second", ["perf/tokens_per_second"]),
    ("MFU", ["perf/mfu"]),
    ("Padding", ["perf/padding_fraction"]),
]
TABLES = ["samples/table"]
INSTALL = "pip install 'dpo-lab[dashboards]'"


@dataclass
class Logged:
    """What a sweep's runs logged, read back from their wandb run files."""

    history: Set[str] = field(default_factory=set)  # metric keys of the history
    summary: Set[str] = field(default_factory=set)  # keys of the last summary, tables among them
    config: Dict[str, Any] = field(default_factory=dict)  # the first run's config
    group: Optional[str] = None
    project: Optional[str] = None
    entity: Optional[str] = None
    runs: List[str] = field(default_factory=list)  # their run dirs
    online: bool = False


def read_logged(sweep_dir: str) -> Logged:
    """Every job's wandb run of the sweep, read with `wandb leet inspect --json` (wandb's own reader)."""
    out = Logged()
    jobs = [n for n in os.listdir(sweep_dir) if os.path.isdir(os.path.join(sweep_dir, n))]
    for name in sorted(jobs, key=lambda n: (len(n), n)):
        result = files.read_json(os.path.join(sweep_dir, name, files.RESULT)) or {}
        run_dir = result.get("wandb_dir")
        if not run_dir or not os.path.isdir(run_dir):
            continue
        out.runs.append(run_dir)
        out.online = out.online or not os.path.basename(run_dir).startswith("offline-")
        for record in _records(run_dir):
            kind = record.get("type")
            if kind == "history":
                out.history |= set(record["history"]["item"])
            elif kind == "summary":  # a table or other media is flattened: samples/table._type, samples/table.path
                keys = set(record["summary"].get("update", {}))
                out.summary |= keys | {k[: -len("._type")] for k in keys if k.endswith("._type")}
            elif kind == "run" and not out.config:
                run = record["run"]
                out.config = run.get("config", {}).get("update", {})
                out.group, out.project, out.entity = run.get("run_group"), run.get("project"), run.get("entity")
    if not out.runs:
        raise UserError(
            f"{sweep_dir}: none of its jobs has a wandb run (wandb.mode=disabled, or no job ran yet), so there is "
            "nothing for a W&B view to show. Run the sweep with wandb.mode=offline or online."
        )
    return out


def _records(run_dir: str) -> List[Dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", run_dir], capture_output=True, text=True
    )
    if proc.returncode:
        log.warning("Could not read %s (wandb leet inspect: %s); the view leaves its keys out.", run_dir, proc.stderr)
        return []
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def group_keys(swept: List[str], config: Dict[str, Any]) -> List[str]:
    """The config keys of the swept keys, seed left out (its runs are replicates of one setting): a group option
    (loss=ipo) is `choices.<group>`, a value (beta, trainer.max_length) its own dotted path."""
    keys = []
    for key in swept:
        key = key.lstrip("+~")
        if key == "seed":
            continue
        if key in config.get("choices", {}):
            keys.append(f"choices.{key}")
        elif _has(config, key):
            keys.append(key)
        else:
            log.warning("The swept key %s is not in the runs' logged config; the view does not group by it.", key)
    return keys


def _has(config: Dict[str, Any], dotted: str) -> bool:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def build(sweep_dir: str, logged: Optional[Logged] = None) -> Tuple[Any, List[str]]:
    """(the view, as a wandb_workspaces Workspace; the keys left out because no run logged them)."""
    ws, wr = _library()
    sweep = files.read_json(os.path.join(sweep_dir, "sweep.json"))
    if not sweep:
        raise UserError(f"{sweep_dir} has no sweep.json: give the directory of a multirun (multirun/<name>/<time>).")
    logged = logged or read_logged(sweep_dir)
    results = [files.read_json(os.path.join(r, "..", "..", files.RESULT)) or {} for r in logged.runs]
    objective = quality.OBJECTIVES[quality.resolve(sweep.get("objective", "auto"), results)].key
    keys = group_keys(sweep.get("swept_keys", []), logged.config)
    missing: List[str] = []

    def lines(specs) -> list:
        panels = []
        for title, candidates in specs:
            found = [k for k in candidates if k in logged.history][:1]
            if not found:
                missing.extend(candidates[:1])
                continue
            panels.append(wr.LinePlot(title=title, x=X, y=found, groupby_aggfunc="mean", groupby_rangefunc="stderr"))
        return panels

    objective_panels = lines([(f"Objective: {objective}", [objective])])
    sweep_panels = []
    if objective in logged.summary:
        columns = [wr.ParallelCoordinatesPlotColumn(metric=wr.Config(k)) for k in keys]
        columns.append(wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(objective)))
        sweep_panels = [
            wr.ParallelCoordinatesPlot(title=f"Swept keys -> {objective}", columns=columns),
            wr.ParameterImportancePlot(with_respect_to=objective),
        ]
    sweep_panels.append(wr.RunComparer(diff_only="split"))
    tables = [wr.WeavePanelSummaryTable(table_name=t) for t in TABLES if t in logged.summary]
    missing.extend(t for t in TABLES if t not in logged.summary)
    sections = [
        ws.Section(name="Objective", panels=objective_panels, is_open=True, pinned=True),
        ws.Section(name="Eval", panels=lines(EVAL), is_open=True),
        ws.Section(name="Checkpoint samples", panels=lines(SAMPLES) + tables, is_open=True),
        ws.Section(name="Sweep", panels=sweep_panels, is_open=True),
        ws.Section(name="Speed", panels=lines(SPEED)),
    ]
    for key in missing:
        log.warning("No run of %s logged %s: the view leaves its panel out.", sweep_dir, key)
    entity = logged.entity or (logged.config.get("wandb") or {}).get("entity") or ""
    view = ws.Workspace(
        entity=entity,
        project=logged.project or (logged.config.get("wandb") or {}).get("project") or "dpo-lab",
        name=f"dpo-lab {logged.group or sweep.get('name')}",
        sections=[s for s in sections if s.panels],
        runset_settings=ws.RunsetSettings(
            filters=[ws.Metric("Group") == (logged.group or sweep.get("name"))],
            groupby=[ws.Config(k) for k in keys],
        ),
    )
    return view, missing


def panel_keys(view) -> Set[str]:
    """Every metric and table key the view's panels name (what the tests hold against the runs' logs)."""
    keys: Set[str] = set()
    for section in view.sections:
        for panel in section.panels:
            keys |= {str(y) for y in getattr(panel, "y", None) or []}
            if getattr(panel, "with_respect_to", None):
                keys.add(panel.with_respect_to)
            for column in getattr(panel, "columns", None) or []:
                if type(column.metric).__name__ == "SummaryMetric":
                    keys.add(column.metric.name)
            if getattr(panel, "table_name", None):
                keys.add(panel.table_name)
    return keys


def write_spec(view, sweep_dir: str) -> str:
    """The view's spec (the library's own model of it, wandb_workspaces' internal.View, as JSON: what save() sends)
    in the sweep dir; its path."""
    path = os.path.join(sweep_dir, SPEC)
    files.write_json(path, view._to_model().model_dump(mode="json", by_alias=True, exclude_none=True))
    return path


def push(view, sweep_dir: str) -> str:
    """Save the view to W&B and record its URL in sweep.json and report.md; UserError when wandb cannot."""
    import wandb

    try:  # raises at once without credentials
        api = wandb.Api(timeout=30)
        view.entity = view.entity or api.default_entity or ""
    except Exception as e:
        raise UserError(_not_logged_in(e)) from None
    try:
        view.save()
    except Exception as e:
        raise UserError(_not_logged_in(e)) from None
    url = view.url
    sweep_json = os.path.join(sweep_dir, "sweep.json")
    files.write_json(sweep_json, {**(files.read_json(sweep_json) or {}), "dashboard_url": url})
    return url


def _not_logged_in(e: Exception) -> str:
    text = " ".join(str(e).split())[:200] or type(e).__name__
    return (
        f"W&B did not take the view ({type(e).__name__}: {text}). Saving a view needs a logged-in wandb: run "
        "`wandb login` (or set WANDB_API_KEY; a self-hosted server: WANDB_BASE_URL), sync the runs first "
        "(`wandb sync SWEEP_DIR/wandb`), then rerun with --push."
    )


def _library():
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
    except ImportError:
        raise UserError(f"A W&B view needs wandb-workspaces, which is not installed: {INSTALL}.") from None
    return ws, wr


def main(sweep_dir: str, do_push: bool) -> str:
    """The command: build the view, write its spec, push it with --push; what to print."""
    view, missing = build(sweep_dir)
    path = write_spec(view, sweep_dir)
    said = f"Wrote the W&B view of {sweep_dir} to {path} ({sum(len(s.panels) for s in view.sections)} panels"
    said += f"; left out, as no run logged them: {', '.join(missing)})." if missing else ")."
    if do_push:
        return f"{said}\nSaved it to W&B: {push(view, sweep_dir)}"
    return (
        f"{said}\nTo see it in W&B, once logged in (wandb login):\n"
        f"  wandb sync {tracking.sweep_view(sweep_dir)}\n"
        f"  python -m dpo_lab dashboard {sweep_dir} --push"
    )


def at_sweep_end(sweep_dir: str) -> Optional[str]:
    """After an online sweep (wandb.dashboard=true): push its view and return its URL (None offline); a failure
    is a warning, never the sweep's."""
    try:
        logged = read_logged(sweep_dir)
        if not logged.online:
            return None
        view, _ = build(sweep_dir, logged)
        write_spec(view, sweep_dir)
        url = push(view, sweep_dir)
        log.info("W&B view of the sweep: %s", url)
        return url
    except Exception as e:  # the view is a convenience: the sweep's results stand without it
        retry = f"python -m dpo_lab dashboard {sweep_dir} --push"
        log.warning("No W&B view for %s (%s); `%s` retries.", sweep_dir, e, retry)
        return None
