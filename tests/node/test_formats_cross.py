"""citysense_formats against the firmware's own MicroPython code (config.py, state.py,
app.Config's defaults) under the real micropython at the device's 96 KiB heap: the same
defaults, the same limits (every value just inside and just outside each is accepted or
refused by both), the same /state/seq bytes both ways."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from nodeproc import MP, mp_env
from peer import DEVICE_SEED, OPERATOR_SEED, NodeProc, provision, public_key
from support import micropython_path

from citysense_formats import node_config, state_seq
from gateway.protocol import FrameType, decode_hello

FLOOR = 1_764_047_000_123


def config_request(flash: Path, data: bytes) -> str:
    """A request to load `data` as device.json (each case in its own file)."""
    path = flash / "cases" / f"{len(list(flash.glob('cases/*')))}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return f"config {path.relative_to(flash)}"


def node_answers(flash: Path, requests: list[str]) -> list[str]:
    (flash / "config").mkdir(parents=True, exist_ok=True)
    (flash / "config" / "device.key").write_bytes(DEVICE_SEED)
    (flash / "config" / "operator.pub").write_bytes(public_key(OPERATOR_SEED))
    proc = subprocess.run(
        [micropython_path(), "-X", "heapsize=96k", str(MP / "formats_cross.py")],
        cwd=str(flash),
        env=mp_env(),
        input="".join(r + "\n" for r in requests).encode(),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == len(requests), proc.stdout.decode() + proc.stderr.decode()
    return lines


def _config(**change: Any) -> dict[str, Any]:
    return {"device_id": "esp32-aa", **node_config.defaults(), **change}


def _edge_values(low: int, high: int) -> list[Any]:
    return [low - 1, low, low + 1, high - 1, high, high + 1, True, float(low), str(low), None]


def _cases() -> list[tuple[str, dict[str, Any]]]:
    cases = [("defaults", _config())]
    for field, (low, high) in node_config.LIMITS.items():
        cases += [(f"{field}={v!r}", _config(**{field: v})) for v in _edge_values(low, high)]
    ids = ["a", "9" * 64, "9" * 65, "", "A.b_c-9", "a+b", "a#b", "a/b", "a b", ".a", "-a", "_a"]
    ids += ["é", "a\n", 7, None]
    # every ASCII character as an id's first and as its second character
    ids += [chr(c) + "a" for c in range(128)] + ["a" + chr(c) for c in range(128)]
    cases += [(f"device_id={i!r}", _config(device_id=i)) for i in ids]
    cases += [(f"sensors={s!r}", _config(sensors=s)) for s in ([], ["bme280"], "bme280", [1])]
    for field, (low, high) in node_config.LINK_LIMITS.items():
        for v in (low, high):
            cases.append((f"link.{field}={v}", _config(link=dict(_config()["link"], **{field: v}))))
    cases += [
        (f"baud={b}", _config(link=dict(_config()["link"], baud=b))) for b in node_config.BAUDS
    ]
    return cases


def _package_takes(cfg: dict[str, Any]) -> bool:
    try:
        node_config.validate(cfg)
    except node_config.NodeConfigError:
        return False
    return True


def test_the_node_takes_exactly_what_the_package_takes(tmp_path: Path) -> None:
    cases = _cases()
    requests = ["defaults"] + [
        config_request(tmp_path, (json.dumps(cfg) + "\n").encode()) for _, cfg in cases
    ]
    defaults, *answers = node_answers(tmp_path, requests)
    assert json.loads(defaults) == {"device_id": "esp32-default", **node_config.DEFAULTS}
    for (name, cfg), got in zip(cases, answers, strict=True):
        if _package_takes(cfg):
            assert got.startswith("ok ") and json.loads(got[3:]) == cfg, name  # as given
        else:
            # the node is stricter nowhere and looser only on the board's link values
            assert got == "refused config-invalid", name
    # the package's refusals of node-level fields are the node's refusals, one by one
    refused = [name for (name, cfg), got in zip(cases, answers, strict=True) if "refused" in got]
    assert "interval_s=0" in refused and "interval_s=86401" in refused
    assert "batch=0" in refused and "batch=65" in refused and "device_id='a+b'" in refused
    assert "batch=64" not in refused and "interval_s=86400" not in refused


def test_the_node_fills_left_out_keys_with_the_package_defaults(tmp_path: Path) -> None:
    """Enrollment writes every key; a key left out (a hand-written file) takes the
    node's default, which must be the package's."""
    (got,) = node_answers(tmp_path, [config_request(tmp_path, b'{"device_id": "esp32-x"}')])
    assert got.startswith("ok ")
    assert json.loads(got[3:]) == {"device_id": "esp32-x", **node_config.DEFAULTS}


def _size(cfg: dict[str, Any]) -> int:
    return len((json.dumps(cfg) + "\n").encode())


def _sized(n: int, device_id: str = "esp32-aa") -> dict[str, Any]:
    """A config whose device.json is n bytes, padded with a key the node ignores: 8-char
    notes, as many as fit, then one shorter (parsed in small pieces, as a real file)."""
    cfg = _config(device_id=device_id, notes=["n0000000"])
    while _size(cfg) + 12 + 6 <= n:  # each further note costs ', "' + 8 + '"' = 12
        cfg["notes"].append(f"n{len(cfg['notes']):07d}")
    cfg["notes"].append("x" * (n - _size(cfg) - 4))
    assert _size(cfg) == n
    return cfg


def test_the_size_limit_is_the_node_s(tmp_path: Path) -> None:
    fits, over = _sized(node_config.MAX_BYTES), _sized(node_config.MAX_BYTES + 1)
    data = node_config.encode(fits)
    with pytest.raises(node_config.NodeConfigError, match="2049 bytes, the node reads at most"):
        node_config.encode(over)
    requests = [config_request(tmp_path, data)]
    requests.append(config_request(tmp_path, (json.dumps(over) + "\n").encode()))
    ok, refused = node_answers(tmp_path, requests)
    del fits["notes"]  # ignored by the node, as the package's table says nothing of it
    assert ok.startswith("ok ") and json.loads(ok[3:]) == fits
    assert refused == "refused config-corrupt"


VALUES = [0, 1, 2**31, 2**32, FLOOR, 2**62 + FLOOR, 2**63, 2**64 - 1]


def test_state_seq_bytes_both_ways(tmp_path: Path) -> None:
    corrupt = [b"", b"\x01" * 11, b"\x01" * 12, b"\x01" * 13]
    flipped = bytearray(state_seq.encode(FLOOR))
    flipped[3] ^= 0x04
    corrupt.append(bytes(flipped))
    requests = [f"store {v}" for v in VALUES]
    requests += [f"load {state_seq.encode(v).hex()}" for v in VALUES]
    requests += [f"load {raw.hex()}" for raw in corrupt]
    answers = node_answers(tmp_path, requests)
    n = len(VALUES)
    # the node's bytes are the package's, and the package reads them back
    assert answers[:n] == [state_seq.encode(v).hex() for v in VALUES]
    assert [state_seq.decode(bytes.fromhex(a)) for a in answers[:n]] == VALUES
    # the package's bytes are read by the node as the same value
    assert answers[n : 2 * n] == [str(v) for v in VALUES]
    # what the package refuses as torn or corrupt, the node ignores (falls back)
    assert answers[2 * n :] == ["-1"] * len(corrupt)
    for raw in corrupt:
        with pytest.raises(state_seq.StateSeqError):
            state_seq.decode(raw)


@pytest.mark.parametrize("size", [1024, 1536, 2048])
def test_a_config_at_the_size_limit_boots_the_real_node(tmp_path: Path, size: int) -> None:
    """The limit is one the node can live with at 96 KiB: the whole app boots with it."""
    flash = tmp_path / "flash"
    provision(flash)
    cfg = _sized(size, "esp32-test")
    cfg.update(interval_s=1, batch=1)
    (flash / "config" / "device.json").write_bytes(node_config.encode(cfg))
    node = NodeProc(flash)
    try:
        hello = decode_hello(node.peer.expect(FrameType.HELLO, timeout=30))
        record = node.peer.expect(FrameType.RECORD, timeout=30, skip=(FrameType.HELLO,))
    finally:
        node.stop()
    assert (hello.device_id, hello.problem) == ("esp32-test", None), node.stderr.read_text()
    assert record  # it samples, signs and sends with that config loaded
    assert node.proc.returncode == -9  # killed by stop(), never died by itself
