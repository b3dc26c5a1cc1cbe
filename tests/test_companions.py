"""Done-file and checksum-file names and contents: templates, shapes, the checksum formats
partners write, and config mistakes reported with their key path."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from conveyor import companions
from conveyor.config import load_config
from conveyor.errors import ConfigError

SHA = hashlib.sha256(b"x").hexdigest()
MD5 = hashlib.md5(b"x").hexdigest()


def test_templates_render_and_have_shapes() -> None:
    assert companions.render("{name}.done", "PAY_1.csv") == "PAY_1.csv.done"
    assert companions.render("{stem}.ok", "PAY_1.csv") == "PAY_1.ok"
    assert companions.render("{stem}{ext}.sha256", "a.tar.gz") == "a.tar.gz.sha256"
    assert companions.beside("in/sub/a.csv", "ready.flag") == "in/sub/ready.flag"
    ok = companions.shape("{stem}.ok")
    assert ok.fullmatch("a.ok") and not ok.fullmatch(".ok") and not ok.fullmatch("a.csv")
    assert companions.shape("ready.flag").fullmatch("ready.flag")
    assert companions.per_file("{name}.done") and not companions.per_file("ready.flag")


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("{name}", "no text of its own"),
        ("{nme}.done", "unknown field {nme}"),
        ("../{name}.done", "path separator"),
        ("{name.done", "unmatched brace"),
        ("", "empty"),
    ],
)
def test_bad_templates(template: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        companions.check_template(template)


@pytest.mark.parametrize(
    "text",
    [
        SHA,
        SHA.upper() + "\n",
        f"{SHA}  a.csv\n",
        f"{SHA} *a.csv\n",
        f"{'0' * 64}  other.csv\n{SHA.upper()}  ./a.csv\n",
        f"SHA256 (a.csv) = {SHA}\n",
        f"{SHA}  a-as-the-partner-named-it.csv\n",
    ],
)
def test_checksum_formats(text: str) -> None:
    assert companions.expected_digest(text, "a.csv", "sha256") == SHA


def test_checksum_files_that_say_nothing_of_the_file() -> None:
    assert companions.expected_digest(f"{MD5}  a.csv\n", "a.csv", "sha256") is None  # an md5, not a sha256
    assert companions.expected_digest(f"{SHA}  b.csv\n{SHA}  c.csv\n", "a.csv", "sha256") is None
    assert companions.expected_digest("", "a.csv", "md5") is None
    assert companions.expected_digest(MD5, "a.csv", "md5") == MD5
    assert companions.checksum_line(SHA, "a.csv") == f"{SHA}  a.csv\n".encode()


def test_config_mistakes_name_their_key(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(f"""
instances: {{partner: {{type: local, root: {tmp_path}}}}}
flows:
  f:
    source: {{instance: partner, done_file: "{{nam}}.done", checksum: {{file: "all.sha256"}}}}
    target: {{type: directory, path: {tmp_path}/out, done_file: "{{name}}.meta.json", checksum: crc32}}
  g:
    source: {{instance: partner, checksum: md5}}
    target: {{instance: partner, path: out, done_file: "batch.ready"}}
""")
    with pytest.raises(ConfigError) as e:
        load_config(p, env={})
    got = "\n".join(str(x) for x in e.value.problems)
    assert "flows.f.source.done_file (line 5)" in got and "unknown field {nam}" in got
    assert "flows.f.source.checksum.file (line 5)" in got and "give {name} or {stem}" in got
    assert "flows.f.target.done_file (line 6)" in got and "metadata sidecar" in got
    assert "flows.f.target.checksum (line 6)" in got
    assert "flows.g.target.done_file (line 9)" in got and "names one file for all" in got
    assert "flows.g.source" not in got, "checksum: md5 is the short form"
