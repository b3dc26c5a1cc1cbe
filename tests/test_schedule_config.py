"""Schedules and expected arrivals in the config: every bad value named by its key path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conveyor.config import load_config
from conveyor.config.base import FileSourceConfig
from conveyor.errors import ConfigError


def problems(tmp_path: Path, text: str) -> list[str]:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p, env={})
    return [str(x) for x in e.value.problems]


BAD = """
instances: {box: {type: local, root: /x}}
flows:
  a: {source: {instance: box, schedule: "*/5 8-18 * * MON-FRX"}, target: {type: directory, path: /y}}
  b: {source: {instance: box, schedule: "61 * * * *"}, target: {type: directory, path: /y}}
  c: {source: {instance: box, schedule: "* * *"}, target: {type: directory, path: /y}}
  d: {source: {instance: box, schedule: "*/5 * * * *", poll_interval: 10s}, target: {type: directory, path: /y}}
  e: {source: {instance: box}, target: {type: directory, path: /y}, timezone: Mars/Olympus}
  f:
    source: {instance: box}
    target: {type: directory, path: /y}
    expect: {by: "25:00", on: "MON-FRX", timezone: Europe/Londn, min_files: 0, alert_url: "ftp://x/"}
  g:
    source: {instance: box}
    target: {type: directory, path: /y}
    expect: {on: [MON, 3]}
  h: {source: {instance: box, schedule: "0 0 30 2 *"}, target: {type: directory, path: /y}}
  i: {source: {instance: box}, target: {type: directory, path: /y}, expect: {by: "06:00", on: []}}
"""


def test_bad_schedules_and_expectations_name_their_keys(tmp_path: Path) -> None:
    got = problems(tmp_path, BAD)
    # Flow-level keys are checked first, then each source against its instance's type.
    assert got == [
        "flows.e.timezone (line 8): unknown time zone 'Mars/Olympus' (an IANA name such as Europe/London or UTC)",
        "flows.f.expect.by (line 12): '25:00' is not a time of day: hours go to 23, minutes and seconds to 59",
        "flows.f.expect.on (line 12): 'FRX' is not a day: use MON TUE WED THU FRI SAT SUN",
        "flows.f.expect.timezone (line 12): unknown time zone 'Europe/Londn' (an IANA name such as "
        "Europe/London or UTC)",
        "flows.f.expect.min_files (line 12): Input should be greater than or equal to 1",
        "flows.f.expect.alert_url (line 12): must be an http:// or https:// URL",
        "flows.g.expect.by (line 16): missing required key",
        "flows.g.expect.on (line 16): expected day names, ranges or a list of them, e.g. MON-FRI",
        "flows.i.expect.on (line 18): expected day names, ranges or a list of them, e.g. MON-FRI",
        "flows.a.source.schedule (line 4): not a valid cron expression: [*/5 8-18 * * mon-frx] is not acceptable",
        "flows.b.source.schedule (line 5): not a valid cron expression: [61 * * * *] is not acceptable, out of range",
        "flows.c.source.schedule (line 6): '* * *' has 3 fields: a schedule has 5 (minute hour day month weekday) "
        "or 6 (second first)",
        "flows.d.source.schedule (line 7): give either schedule or poll_interval, not both",
        "flows.h.source.schedule (line 17): '0 0 30 2 *' never comes (no such date, like 30 February)",
    ]


def test_conveyor_run_refuses_an_invalid_cron(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"state: {tmp_path}/state.db\nhealth: {{listen: null}}\ninstances: {{box: {{type: local, root: {tmp_path}}}}}\n"
        "flows:\n  f:\n    source: {instance: box, schedule: '0 25 * * *'}\n"
        f"    target: {{type: directory, path: {tmp_path}/out}}\n"
    )
    run = subprocess.run([sys.executable, "-m", "conveyor", "run", "-c", str(cfg)], capture_output=True, text=True)
    assert run.returncode == 2
    assert "flows.f.source.schedule (line 6): not a valid cron expression:" in run.stderr
    assert "Traceback" not in run.stderr


def test_good_schedule_and_expectation(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(
        "instances: {box: {type: local, root: /x}}\n"
        "flows:\n  f:\n    timezone: Europe/London\n"
        "    source: {instance: box, schedule: '*/2 * * * * *'}\n"
        "    target: {type: directory, path: /y}\n"
        "    expect: {by: '06:00', on: [MON-WED, fri], alert_url: 'https://hooks.example.com/T0/B0/secret'}\n"
    )
    flow = load_config(p, env={}).flows["f"]
    assert flow.timezone == "Europe/London"
    assert isinstance(flow.source, FileSourceConfig) and flow.source.schedule == "*/2 * * * * *"
    assert flow.expect is not None and flow.expect.by == "06:00" and flow.expect.min_files == 1
    assert "https://hooks.example.com/T0/B0/secret" in load_config(p, env={}).secrets()
