"""The run's record on disk. results.jsonl is written as the run goes (a start line, then one
line per group as it ends, measured or left out), so a run that is killed keeps what it
measured; results.json (schema: bench/README.md) is assembled from the same records at the end,
after which the .jsonl, now redundant, is removed. load() reads either file, so
`python -m bench.markdown` also reads the .jsonl a killed run left behind."""
import json
from pathlib import Path
from typing import Dict, List, Optional

from .names import OPTIMIZERS

SCHEMA = "fused_optim.bench/3"
JSONL = "results.jsonl"
JSON = "results.json"
KEY = ("case", "param_dtype", "state_dtype", "optimizer")  # what names a group


class ProgressLog:
    """results.jsonl, one JSON object a line, each flushed when written."""

    def __init__(self, out: Path, start: Dict):
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / JSONL
        self._file = open(self.path, "w")
        self.write({"kind": "start", "schema": SCHEMA, **start})

    def write(self, record: Dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self, remove: bool) -> None:
        self._file.close()
        if remove:
            self.path.unlink()


def write_json(path: Path, doc: Dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"schema": SCHEMA, **doc}, indent=1) + "\n")
    return path


def _row_order(row: Dict, impl_order: Dict[str, int]) -> tuple:
    return (OPTIMIZERS.index(row["optimizer"]) if row["optimizer"] in OPTIMIZERS else len(OPTIMIZERS),
            impl_order.get(row["impl"], len(impl_order)))


def assemble(start: Dict, groups: List[Dict], cut: List[Dict], interrupted: Optional[str]) -> Dict:
    """results.json's document from the start record, the measured groups' records and those
    left out. Rows in the order of the cases, the dtype configurations and the optimizers
    (the run measured them in priority order), each with its speed-ups over the peers; each
    case's configurations with the yardstick samples of all its groups pooled."""
    from .report import add_speedups  # torch: only when a document is assembled
    from .timing import Timing, Yardstick

    yard = Yardstick(**start["yardstick"])
    configs = start["configs"]
    cases = [{**c, "configs": []} for c in start["cases"]]
    rows, skipped = [], []
    for case in cases:
        for config in configs:
            mine = [g for g in groups if g["case"] == case["name"] and g["param_dtype"] == config["param_dtype"]
                    and g["state_dtype"] == config["state_dtype"]]
            pooled = [s for g in mine for s in g["yardstick_samples_s"]]
            if pooled:
                case["configs"].append({**config, "yardstick": yard.record(Timing(pooled))})
            impl_order = {}
            for g in mine:
                impl_order.update((r["impl"], len(impl_order) + k) for k, r in enumerate(g["rows"])
                                  if r["impl"] not in impl_order)
            rows += sorted((r for g in mine for r in g["rows"]), key=lambda r: _row_order(r, impl_order))
            skipped += [s for g in mine for s in g["skipped"]]
    add_speedups(rows)
    return {"environment": start["environment"], "settings": start["settings"], "notes": list(start["notes"]),
            "cases": cases, "rows": rows, "skipped": skipped, "cut": cut,
            "shortened": [{**{k: g[k] for k in KEY}, "reason": g["shortened"]} for g in groups if g["shortened"]],
            "interrupted": interrupted, "complete": not cut and interrupted is None,
            # where the run's time went, group by group, in the order they ran
            "timeline": [{**{k: g[k] for k in KEY}, **{k: g[k] for k in ("build_s", "rounds", "wall_s", "end_s")}}
                         for g in groups]}


def load(path: Path) -> Dict:
    """results.json, or the document a results.jsonl holds (a run killed before it wrote
    results.json: "interrupted" says so, wall_s is the end of its last group)."""
    if path.suffix != ".jsonl":
        return json.loads(path.read_text())
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    start = records[0]
    groups = [r for r in records if r["kind"] == "group"]
    cut = [r for r in records if r["kind"] == "cut"]
    env = dict(start["environment"])
    env["wall_s"] = max((g["end_s"] for g in groups), default=0.0)
    return assemble({**start, "environment": env}, groups, cut, "killed before it wrote results.json")
