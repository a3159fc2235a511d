"""cloud/config.py: the `--config FILE` interface every citysense-cloud subcommand reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud import config
from cloud.cli import main


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cloud.toml"
    p.write_text(text)
    return p


def test_full_config_paths_relative_to_file(tmp_path: Path) -> None:
    for name in ("ca.pem", "op.pem", "op.key", "operator.key"):
        (tmp_path / name).write_text("x")
    (tmp_path / "reg").mkdir()
    cfg = config.load(
        write(
            tmp_path,
            """
[broker]
url = "mqtts://broker.example:8884"
ca_file = "ca.pem"
cert_file = "op.pem"
key_file = "op.key"
[registry]
path = "reg"
[operator]
key_file = "operator.key"
[database]
url = "sqlite:///x.sqlite3"
""",
        )
    )
    assert cfg.broker is not None
    assert (cfg.broker.host, cfg.broker.port, cfg.broker.tls) == ("broker.example", 8884, True)
    assert cfg.broker.ca_file == tmp_path / "ca.pem"
    assert cfg.need_registry() == tmp_path / "reg"
    assert cfg.need_operator_key() == tmp_path / "operator.key"
    assert cfg.need_database() == "sqlite:///x.sqlite3"
    assert cfg.state_dir == tmp_path


def test_every_problem_reported_one_line_each(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[broker]
url = "mqtts://h"
colour = "blue"
[extra]
""",
    )
    with pytest.raises(config.ConfigError) as ei:
        config.load(path)
    assert ei.value.problems == [
        "extra: unknown table",
        "broker.colour: unknown key",
        "broker.ca_file: required for mqtts:// (mutual TLS)",
        "broker.cert_file: required for mqtts:// (mutual TLS)",
        "broker.key_file: required for mqtts:// (mutual TLS)",
    ]


def test_flag_overrides_and_missing_sections(tmp_path: Path) -> None:
    cfg = config.load(None, {"broker.url": "mqtt://127.0.0.1:1999", "database.url": None})
    assert cfg.broker is not None and (cfg.broker.port, cfg.broker.tls) == (1999, False)
    with pytest.raises(config.ConfigError) as ei:
        cfg.need_database()
    assert ei.value.problems == ["no --config given: [database] url missing (or --database URL)"]


def test_cli_bad_config_is_one_line_per_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cloud import cli

    bad = write(tmp_path, "[broker\n")
    seen: list[object] = []
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "cmd")
    probe = sub.add_parser("probe")  # type: ignore[attr-defined]
    probe.set_defaults(func=lambda args, cfg: seen.append(cfg) or 0)
    old = cli.build_parser
    cli.build_parser = lambda: parser  # type: ignore[assignment]
    try:
        rc = main(["--config", str(bad), "probe"])
    finally:
        cli.build_parser = old  # type: ignore[assignment]
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and seen == []
    assert len(err) == 1 and err[0].startswith(f"citysense-cloud: config: {bad}: not valid TOML")
