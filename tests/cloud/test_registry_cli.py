"""citysense-cloud registry publish/version without a gateway: the version only grows
(clock behind, same second, a lost state dir), and bad input is one line with its exit
code, nothing published. (With two real gateways: test_registry_e2e.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cloudsupport import run_cli
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from gwsupport import make_node, write_entry
from support import free_port

from cloud.registry_sync import VERSION_FILE, VersionStoreError, last_version, next_version


def test_version_only_grows(tmp_path: Path) -> None:
    assert last_version(tmp_path) is None
    assert next_version(tmp_path, now=1000.5) == 1000
    assert next_version(tmp_path, now=1000.9) == 1001  # same second: last + 1
    assert next_version(tmp_path, now=900) == 1002  # clock stepped back
    assert next_version(tmp_path, now=5000) == 5000  # the clock moved past
    assert json.loads((tmp_path / VERSION_FILE).read_text()) == {"version": 5000}
    assert (tmp_path / VERSION_FILE).stat().st_mode & 0o777 == 0o600
    (tmp_path / VERSION_FILE).write_text("{broken")
    with pytest.raises(VersionStoreError, match="move it aside"):
        next_version(tmp_path, now=6000)
    (tmp_path / VERSION_FILE).unlink()  # a lost state dir: the clock carries on above it
    assert next_version(tmp_path, now=6000) == 6000


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    (tmp_path / "registry").mkdir()
    key = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "operator.key").write_bytes(key)
    (tmp_path / "operator.key").chmod(0o600)
    toml = tmp_path / "cloud.toml"
    toml.write_text(
        f'[broker]\nurl = "mqtt://127.0.0.1:{free_port()}"\n[registry]\npath = "registry"\n'
        '[operator]\nkey_file = "operator.key"\n[state]\ndir = "state"\n'
    )
    return toml


def one_line(res: object, code: int, start: str) -> str:
    assert res.returncode == code, (res.stdout, res.stderr)  # type: ignore[attr-defined]
    lines: list[str] = res.stderr.splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith(start), lines
    assert res.stdout == ""  # type: ignore[attr-defined]
    return lines[0]


def test_bad_input_is_one_line_and_nothing_published(conf: Path) -> None:
    d = conf.parent
    line = one_line(run_cli("--config", str(conf), "registry", "publish"), 2, "citysense-cloud: ")
    assert "holds no entries" in line and "--allow-empty" in line
    write_entry(d / "registry", make_node("node-1"))
    bad = one_line(
        run_cli("--config", str(conf), "registry", "publish", "--gateway", "gw/1"),
        2,
        "citysense-cloud: invalid gateway id 'gw/1'",
    )
    assert "letters, digits" in bad
    (d / "registry" / "node-2.json").write_text('{"device_id": "node-3"}')
    line = one_line(run_cli("--config", str(conf), "registry", "publish"), 2, "citysense-cloud: ")
    assert "node-2.json" in line and "nothing published" in line
    (d / "registry" / "node-2.json").unlink()
    (d / "operator.key").chmod(0o644)
    line = one_line(run_cli("--config", str(conf), "registry", "publish"), 2, "citysense-cloud: ")
    assert "chmod 600" in line
    (d / "operator.key").chmod(0o600)
    # nothing listens on the broker's port: exit 5, the version used is not reused
    line = one_line(run_cli("--config", str(conf), "registry", "publish"), 5, "citysense-cloud: ")
    assert "unreachable" in line
    used = last_version(d / "state")
    assert used is not None
    out = run_cli("--config", str(conf), "registry", "version")
    assert out.returncode == 0 and out.stdout == f"{used}\n"
