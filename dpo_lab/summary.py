"""The table that ends every sweep: one row per job with its status and headline eval metrics."""

import csv
import glob
import logging
import os
from typing import Any, Dict, List

from hydra.experimental.callback import Callback

from dpo_lab.job import read_json

log = logging.getLogger(__name__)

COLUMNS = [("job", "job"), ("overrides", "overrides"), ("status", "status"), ("eval/rewards/margins", "margin"),
           ("best_eval/rewards/margins", "best margin"), ("eval/rewards/accuracies", "accuracy"),
           ("eval/loss", "eval loss"), ("steps", "steps"), ("seconds", "seconds"), ("peak_rss_mb", "peak MB"),
           ("error", "error")]  # fmt: skip


def collect(sweep_dir: str) -> List[Dict[str, Any]]:
    rows = []
    for path in glob.glob(os.path.join(sweep_dir, "*", "result.json")):
        result = read_json(path) or {}
        result["job"] = os.path.basename(os.path.dirname(path))
        result["overrides"] = ",".join(result.get("overrides", []))
        rows.append(result)
    return sorted(rows, key=lambda r: (len(r["job"]), r["job"]))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = "" if value is None else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def format_table(rows: List[Dict[str, Any]]) -> str:
    header = [title for _, title in COLUMNS]
    body = [[_cell(r.get(key)) for key, _ in COLUMNS] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    fmt = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, body)])


def write_summary(sweep_dir: str) -> List[Dict[str, Any]]:
    """Write summary.csv and summary.md into the sweep dir and return the rows."""
    rows = collect(sweep_dir)
    with open(os.path.join(sweep_dir, "summary.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[key for key, _ in COLUMNS], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(sweep_dir, "summary.md"), "w") as f:
        f.write(format_table(rows) + "\n")
    return rows


class SweepSummary(Callback):
    """Hydra callback: print and save the results table when a multirun ends; exit 1 if any job failed."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = config.hydra.sweep.dir
        rows = write_summary(sweep_dir)
        failed = [r for r in rows if r.get("status") != "completed"]
        print(f"\nSweep {sweep_dir}: {len(rows) - len(failed)}/{len(rows)} jobs completed\n{format_table(rows)}\n", flush=True)
        if failed:
            raise SystemExit(1)
