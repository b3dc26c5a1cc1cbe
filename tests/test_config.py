"""Config loading: every problem reported at once, with its key path and YAML line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conveyor.config import load_config
from conveyor.config.base import FileSourceConfig
from conveyor.config.types import parse_duration, parse_size
from conveyor.errors import ConfigError


def problems(tmp_path: Path, text: str, name: str = "c.yaml", env: dict[str, str] | None = None) -> list[str]:
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p, env=env or {})
    return [str(x) for x in e.value.problems]


def test_durations_and_sizes() -> None:
    assert parse_duration("500ms") == 0.5
    assert parse_duration("10s") == 10
    assert parse_duration("5m") == 300
    assert parse_duration("1h") == 3600
    assert parse_size("64KiB") == 65536
    assert parse_size("16MiB") == 16 * 1024 * 1024
    assert parse_size(100) == 100
    with pytest.raises(ValueError, match="needs a unit"):
        parse_duration(10)
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("10 parsecs")


GOOD = """
state: {tmp}/state.db
instances:
  inbox: {{type: local, root: {tmp}/in}}
flows:
  f:
    source: {{instance: inbox, path: a, pattern: "*.csv", poll_interval: 5s, after: {{move: done}}}}
    target: {{type: directory, path: {tmp}/out}}
"""


def test_good_yaml_and_toml_are_the_same(tmp_path: Path) -> None:
    y = tmp_path / "c.yaml"
    y.write_text(GOOD.format(tmp=tmp_path))
    t = tmp_path / "c.toml"
    t.write_text(f"""
state = "{tmp_path}/state.db"
[instances.inbox]
type = "local"
root = "{tmp_path}/in"
[flows.f.source]
instance = "inbox"
path = "a"
pattern = "*.csv"
poll_interval = "5s"
after = {{move = "done"}}
[flows.f.target]
type = "directory"
path = "{tmp_path}/out"
""")
    a, b = load_config(y), load_config(t)
    assert a.flows == b.flows and a.instances == b.instances
    src = a.flows["f"].source
    assert isinstance(src, FileSourceConfig) and src.poll_interval == 5.0


def test_every_problem_at_once_with_path_and_line(tmp_path: Path) -> None:
    text = """\
instances:
  inbox:
    type: local
    root: /srv/in
    colour: blue
  weird:
    type: sftpp
flows:
  a:
    source:
      instance: partnr
      path: x
    target: {type: directory, path: /tmp/out}
  b:
    source:
      instance: inbox
      queue: orders
    target: {type: directory}
  c:
    source: {instance: inbox, path: in, after: {move: in}}
    target: {type: ftp, path: /x}
  d:
    source: {instance: inbox, poll_interval: 10}
    target: {type: directory, path: /o}
"""
    got = problems(tmp_path, text)
    assert "instances.inbox.colour (line 5): unknown key" in got
    assert any(
        p.startswith("instances.weird.type (line 7): unknown instance type 'sftpp'")
        or p.startswith("instances.weird (line 7): unknown instance type 'sftpp'")
        for p in got
    ), got
    assert "flows.a.source.instance (line 11): no instance named 'partnr'" in got
    assert "flows.b.source.queue (line 17): unknown key for a local source (instance 'inbox')" in got
    assert "flows.b.target.path (line 18): missing required key" in got
    assert any(p.startswith("flows.d.source.poll_interval (line 23): a duration needs a unit") for p in got), got
    assert any(
        p.startswith("flows.c.source.after.move (line 20): folder 'in' is inside the watched path") for p in got
    ), got
    assert any(p.startswith("flows.c.target.type (line 21): unknown target type 'ftp'") for p in got), got


def test_target_type_problems_name_the_types(tmp_path: Path) -> None:
    got = problems(
        tmp_path,
        """
instances: {box: {type: local, root: /x}}
flows:
  a: {source: {instance: box}, target: {type: [directory], path: /y}}
  b: {source: {instance: box}, target: {path: /y}}
  c: {source: {instance: box}, target: {type: directory, instance: box, path: /y}}
  d: {source: {instance: box}, target: {type: ftp, path: /y}}
""",
    )
    assert got == [
        "flows.a.target.type (line 4): unknown target type ['directory'] (expected directory or http; "
        "to write to an instance use 'instance: NAME')",
        "flows.b.target (line 5): missing 'type' (directory or http) or 'instance'",
        "flows.c.target (line 6): give either 'type: directory|http' or 'instance: NAME'",
        "flows.d.target.type (line 7): unknown target type 'ftp' (expected directory or http; "
        "to write to an instance use 'instance: NAME')",
    ]


def test_suggests_close_instance_names(tmp_path: Path) -> None:
    got = problems(
        tmp_path,
        """
instances: {partner: {type: local, root: /x}}
flows:
  f: {source: {instance: partnr}, target: {type: directory, path: /y}}
""",
    )
    assert got == ["flows.f.source.instance (line 4): no instance named 'partnr' (did you mean 'partner'?)"]


def test_duplicate_names(tmp_path: Path) -> None:
    got = problems(
        tmp_path,
        """
instances:
  a: {type: local, root: /x}
  a: {type: local, root: /y}
flows: {}
""",
    )
    assert got == ["instances.a (line 4): duplicate key 'a' (the name is used twice)"]


def test_interpolation(tmp_path: Path) -> None:
    secret = tmp_path / "creds" / "token"
    secret.parent.mkdir()
    secret.write_text("s3cr3t\n")
    p = tmp_path / "c.yaml"
    p.write_text("""
instances: {inbox: {type: local, root: "${ROOT}/in"}}
flows:
  f:
    source: {instance: inbox}
    target: {type: http, url: "http://127.0.0.1:9/x", headers: {Authorization: "Bearer ${file:${CRED}/token}"},
             content_type: "literal $${NOT_A_VAR}"}
""")
    cfg = load_config(p, env={"ROOT": "/srv", "CRED": str(secret.parent)})
    assert cfg.instances["inbox"].root == "/srv/in"  # type: ignore[attr-defined]
    assert cfg.flows["f"].target.headers["Authorization"] == "Bearer s3cr3t"
    assert cfg.flows["f"].target.content_type == "literal ${NOT_A_VAR}"
    assert "s3cr3t" in cfg.secrets()


def test_missing_variable_and_file_name_their_key(tmp_path: Path) -> None:
    got = problems(
        tmp_path,
        """
instances: {inbox: {type: local, root: "${NOPE}"}}
flows:
  f:
    source: {instance: inbox}
    target: {type: directory, path: "${file:/nonexistent/pw}"}
""",
    )
    assert "instances.inbox.root (line 2): environment variable 'NOPE' is not set" in got
    assert (
        "flows.f.target.path (line 6): cannot read file '/nonexistent/pw' for ${file:...}: No such file or directory"
    ) in got


def test_invalid_yaml_has_a_line(tmp_path: Path) -> None:
    got = problems(tmp_path, "instances:\n  a: [1, 2\nflows: {}\n")
    assert len(got) == 1 and got[0].startswith("(top level) (line ") and "invalid YAML" in got[0]


def test_cli_check_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD.format(tmp=tmp_path))
    bad = tmp_path / "bad.yaml"
    bad.write_text("instances: {}\nflows: {f: {source: {instance: x}, target: {type: directory, path: /o}}}\n")
    ok = subprocess.run([sys.executable, "-m", "conveyor", "check", "-c", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0 and "OK" in ok.stdout
    no = subprocess.run([sys.executable, "-m", "conveyor", "check", "-c", str(bad)], capture_output=True, text=True)
    assert no.returncode == 2
    assert "flows.f.source.instance (line 2): no instance named 'x'" in no.stderr
    run = subprocess.run([sys.executable, "-m", "conveyor", "run", "-c", str(bad)], capture_output=True, text=True)
    assert run.returncode == 2
    v = subprocess.run([sys.executable, "-m", "conveyor", "--version"], capture_output=True, text=True)
    assert v.returncode == 0 and v.stdout.startswith("conveyor ")


def test_natural_spellings_of_one_glob_and_one_step(tmp_path: Path) -> None:
    """One include glob without a list, and one step as a mapping, read as lists of one."""
    from tests.harness import write_config

    flow = {
        "source": {"instance": "disk", "path": "in", "include": "PAY_*.csv", "exclude": "**/tmp/**"},
        "steps": {"decompress": "auto"},
        "target": {"type": "directory", "path": str(tmp_path / "out")},
    }
    cfg = load_config(write_config(tmp_path, {"disk": {"type": "local", "root": str(tmp_path)}}, {"f": flow}))
    f = cfg.flows["f"]
    assert isinstance(f.source, FileSourceConfig)
    assert f.source.include == ["PAY_*.csv"] and f.source.exclude == ["**/tmp/**"]
    assert [s.kind for s in f.steps] == ["decompress"]
