"""Config validation: one exact line per problem, naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from gwsupport import write_config
from support import REPO

from gateway.config import ConfigError, load_config, parse_size


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def test_valid_config_loads(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path / "gw.toml", max_bytes='"2MiB"'))
    assert cfg.gateway_id == "gw-test"
    assert cfg.queue_max_bytes == 2 * 1024 * 1024
    assert cfg.uplink.host == "127.0.0.1" and cfg.uplink.port == 1 and not cfg.uplink.tls
    assert cfg.uplink.client_id == "citysense-gw-test"
    assert cfg.operator_key is None


def test_bad_url_names_the_key(tmp_path: Path) -> None:
    path = write_config(tmp_path / "gw.toml", url='"http://x"')
    assert problems(path) == ["uplink.url: expected mqtt:// or mqtts://, got 'http://x'"]


def test_every_problem_reported(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "gw.toml",
        id='"gw/01"',
        max_bytes='"lots"',
        listen='"nowhere"',
        url='"mqtts://broker:8883"',
        extra_uplink='colour = "blue"',
    )
    assert problems(path) == [
        "gateway.id: expected letters, digits, '.', '_' or '-' (1-64, no '/', '+', '#'), "
        "got 'gw/01'",
        "uplink.colour: unknown key",
        "uplink.ca_file: missing",
        "uplink.cert_file: missing",
        "uplink.key_file: missing",
        "queue.max_bytes: expected a size such as '512MB' or '64MiB', got 'lots'",
        "metrics.listen: expected HOST:PORT, got 'nowhere'",
    ]


def test_operator_key_hex_or_pem(tmp_path: Path) -> None:
    """The same formats `citysense-provision enroll --operator-pub` takes (one parser)."""
    pub = tmp_path / "operator.pub"
    pub.write_text("abc\n")
    path = write_config(tmp_path / "gw.toml", extra_gateway=f'operator_key = "{pub}"')
    assert problems(path) == [
        f"gateway.operator_key: {pub} is not 64 hex chars (the .pub file) or an Ed25519 PEM"
        " public key (give the operator .pub)"
    ]
    pub.write_text("ab" * 32 + "\n")
    assert load_config(path).operator_key == bytes([0xAB]) * 32
    key = Ed25519PrivateKey.generate()
    pub.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    assert load_config(path).operator_key == key.public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw
    )
    pub.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    assert problems(path) == [
        f"gateway.operator_key: {pub} is a private key, not the public one (give the operator .pub)"
    ]


def test_not_toml(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text("[gateway\n")
    (line,) = problems(path)
    assert line.startswith(f"{path}: not valid TOML: ")


def test_parse_size() -> None:
    assert parse_size("512MB") == 512_000_000
    assert parse_size("64 MiB") == 64 * 1024**2
    assert parse_size("1.5GB") == 1_500_000_000
    assert parse_size(4096) == 4096
    for bad in ("-1MB", "12 parsecs", "", 0, True):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_check_config_cli(tmp_path: Path) -> None:
    good = write_config(tmp_path / "gw.toml")
    run = [sys.executable, "-m", "gateway.cli", "check-config", "--config"]
    ok = subprocess.run([*run, str(good)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0
    assert (
        ok.stdout == "OK: gateway gw-test, 1 serial entries, uplink mqtt://127.0.0.1:1 (MQTT 5)\n"
    )
    bad = write_config(tmp_path / "bad.toml", url='"http://x"')
    res = subprocess.run([*run, str(bad)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert res.stderr == (
        f"citysense-gateway: {bad}: uplink.url: expected mqtt:// or mqtts://, got 'http://x'\n"
    )
