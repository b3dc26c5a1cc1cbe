"""``${NAME}`` and ``${file:...}``: one pass over the config text; what was substituted is never read again."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor.config import load_config
from conveyor.config.interpolate import Interpolator


def resolve(text: str, env: dict[str, str]) -> tuple[str, list[str]]:
    interp = Interpolator(env)
    out = interp.resolve(text, ("k",))
    return out, [msg for _, msg in interp.problems]


def test_an_environment_value_is_not_read_for_references(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("private\n")
    out, problems = resolve("${PW}", {"PW": f"${{file:{secret}}}"})
    assert (out, problems) == (f"${{file:{secret}}}", [])
    out, problems = resolve("x${A}y", {"A": "${B}", "B": "no"})
    assert (out, problems) == ("x${B}y", [])


def test_a_file_value_is_not_read_for_references(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("pa${HOME}ss\n")
    interp = Interpolator({"HOME": "/root", "D": str(tmp_path)})
    assert interp.resolve("${file:${D}/pw}", ("k",)) == "pa${HOME}ss"
    assert interp.problems == [] and interp.sensitive == ["pa${HOME}ss"]
    dollars = tmp_path / "dollars"
    dollars.write_text("a$${b")
    assert Interpolator({}).resolve(f"${{file:{dollars}}}", ("k",)) == "a$${b"


def test_nesting_escapes_and_unclosed_references() -> None:
    env = {"DIR": "/run/creds", "A": "1", "B": "2"}
    assert resolve("${A}-${B} $${A} $x $", env) == ("1-2 ${A} $x $", [])
    assert resolve("pa${ss", env) == ("pa${ss", [])
    assert resolve("${A}}", env) == ("1}", [])
    out, problems = resolve("${file:${DIR}/nope}", env)
    assert out == "" and problems == ["cannot read file '/run/creds/nope' for ${file:...}: No such file or directory"]
    assert resolve("${NOPE}", env) == ("", ["environment variable 'NOPE' is not set"])
    assert resolve("${a b}", env) == ("", ["'${a b}' is not a valid reference: use ${NAME} or ${file:/path}"])


def test_nesting_is_bounded() -> None:
    deep = "${" * 50 + "A" + "}" * 50
    _, problems = resolve(deep, {"A": "x"})
    assert problems == ["references nested more than 10 deep"]


CONFIG = """
state: {tmp}/state.db
instances:
  inbox: {{type: local, root: {tmp}/in}}
  partner:
    type: sftp
    host: 127.0.0.1
    username: acme
    password: "{password}"
    host_fingerprint: "SHA256:{fp}"
flows:
  f:
    source: {{instance: inbox}}
    target: {{instance: partner, path: in}}
"""


@pytest.mark.parametrize("case", ["env", "file"])
def test_check_takes_substituted_text_as_it_is(tmp_path: Path, case: str) -> None:
    """An environment value that looks like a reference (``${file:/missing}``) or a password file
    holding ``${NOPE}`` is a password like any other: ``conveyor check`` does not try to read the
    file or the variable, and the config is valid."""
    (tmp_path / "in").mkdir()
    (tmp_path / "pw").write_text("pa${NOPE_NOT_SET}ss\n")
    password = "${PARTNER_PW}" if case == "env" else f"${{file:{tmp_path}/pw}}"
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.format(tmp=tmp_path, fp="A" * 43, password=password))
    env = {k: v for k, v in os.environ.items() if k != "NOPE_NOT_SET"}
    env["PARTNER_PW"] = "${file:/nonexistent/secret}"
    r = subprocess.run(
        [sys.executable, "-m", "conveyor", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout and r.stderr == ""
    cfg = load_config(path, env=env)
    expected = "${file:/nonexistent/secret}" if case == "env" else "pa${NOPE_NOT_SET}ss"
    assert cfg.instances["partner"].password.get_secret_value() == expected  # type: ignore[attr-defined]
