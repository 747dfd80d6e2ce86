"""examples/automations.py runs end to end, and examples/automations.yaml is a valid file
holding the same automations."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from persevere.automations import load_automations

from .conftest import cli_env, run_cli

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "automations.py"
YAML = ROOT / "examples" / "automations.yaml"


def test_the_automations_example_runs_end_to_end(tmp_path: Path) -> None:
    db = tmp_path / "persevere.db"
    # The worker's run processes import persevere: this checkout's, like the script.
    env = cli_env(db, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert f"database: {db}" in out  # PERSEVERE_DB is used, not a temporary one
    assert "FAILED" not in out
    for line in [
        "worker | automation ingest-new-sales-files fired: 1 event matching s3.file.arrived",
        "[ok] the worker ran it: Completed",
        "[ok] with the file's path: 'loaded 3 rows from s3://bucket/sales-eu/2026-11-21.csv'",
        "[ok] Monday: refreshed by 09:00, no firing",
        "scheduler | automation sales-refreshed-by-9 fired: expected sales.refreshed by 09:00 "
        "Europe/London on Tue 2026-11-24; none arrived",
        "scheduler | automation sales-refreshed-by-9: notify done: notified (error)",
        "[ok] the fallback run ran: Completed",
        "[ok] no second firing that day",
        "==> all as described",
    ]:
        assert line in out, out
    # Monday's 09:00 passed without a firing: the only one is Tuesday's.
    assert out.count("sales-refreshed-by-9 fired:") == 1
    # What it left in the database is there for the CLI.
    history = json.loads(
        run_cli(db, "automations", "history", "sales-refreshed-by-9", "--json").stdout
    )
    assert [(f["fired"], f["status"]) for f in history] == [
        ("2026-11-24T09:00:00.000+00:00", "done")
    ]
    runs = json.loads(run_cli(db, "runs", "ls", "--json").stdout)
    assert sorted((r["flow_name"], r["state_name"], r["parameters"]) for r in runs) == [
        ("fallback_refresh", "Completed", {}),
        ("ingest", "Completed", {"path": "s3://bucket/sales-eu/2026-11-21.csv"}),
    ]


def test_the_automations_file_creates_both(tmp_path: Path) -> None:
    db = tmp_path / "persevere.db"
    created = run_cli(db, "automations", "create", str(YAML))
    assert created.returncode == 0, created.stderr
    listed = run_cli(db, "automations", "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    found = {a["name"]: a for a in json.loads(listed.stdout)}
    assert set(found) == {"ingest-new-sales-files", "sales-refreshed-by-9"}
    assert all(a["enabled"] for a in found.values())
    assert found["sales-refreshed-by-9"]["trigger"]["type"] == "deadline"
    assert [a["deployment"] for a in found["ingest-new-sales-files"]["actions"]] == [
        "ingest/on-arrival"
    ]


def test_the_file_holds_the_scripts_automations() -> None:
    spec = importlib.util.spec_from_file_location("automations_example", SCRIPT)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    in_file = {a.pop("name"): a for a in load_automations(YAML)}
    for automation in (script.INGEST, script.REFRESH):
        from_file = in_file[automation["name"]]
        assert from_file["trigger"] == automation["trigger"]
        assert from_file["actions"] == automation["actions"]
