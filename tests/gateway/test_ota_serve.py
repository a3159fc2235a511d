"""gateway.ota.serve.OtaServer and the OTA frame bodies (gateway/protocol/ota.py), and
the node's in-place reading of an OTA_CHUNK (firmware citysense/fetch.py) against them."""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
import time
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support import FIRMWARE_LIB

from citysense_formats import bundle
from gateway.ota.cache import BundleCache
from gateway.ota.serve import GET_BURST, TRANSFER_FRESH_S, OtaServer
from gateway.protocol import MalformedError
from gateway.protocol.ota import (
    CHUNK_MAX,
    OtaGet,
    decode_ota_chunk,
    decode_ota_offer,
    encode_ota_chunk,
    encode_ota_get,
)

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def _bundle() -> bytes:
    files = [("citysense/app.mpy", bytes(range(256)) * 9)]
    return bundle.build(files, version="1.2.0", seq=3, hardware="esp32", protocol=2,
                        arch="x64", signing_key=KEY, created_ms=0)  # fmt: skip


@pytest.fixture
def served(tmp_path: Path) -> tuple[OtaServer, bytes]:
    cache = BundleCache(tmp_path / "ota", 1 << 20, KEY.public_key())
    data = _bundle()
    cache.put(data)
    return OtaServer(cache), data


def _get(server: OtaServer, bid: bytes, offset: int, n: int = 512) -> tuple[object, ...]:
    body = server.answer("port-a", encode_ota_get(OtaGet(bid, offset, n)))
    assert body is not None
    return decode_ota_chunk(body)


def test_chunks_at_offsets_then_the_end(served: tuple[OtaServer, bytes]) -> None:
    server, data = served
    bid = bytes.fromhex(bundle.bundle_id(data))
    got, off = b"", 0
    while True:
        b, o, chunk, reason = _get(server, bid, off, 5000)
        assert (b, o, reason) == (bid, off, None)
        assert chunk is not None and len(chunk) <= CHUNK_MAX
        if not chunk:
            break
        got += chunk
        off += len(chunk)
    assert got == data
    assert server.counts["bytes"] == len(data)


def test_the_transfer_on_a_port_is_reported_while_it_goes_on(
    served: tuple[OtaServer, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, data = served
    bid = bundle.bundle_id(data)
    assert server.transfer("port-a") is None and server.transfer(None) is None
    _get(server, bytes.fromhex(bid), 0)
    _get(server, bytes.fromhex(bid), 512)
    assert server.transfer("port-a") == {"bundle": bid[:16], "offset": 1024, "size": len(data)}
    assert server.transfer("port-b") is None
    _get(server, bytes(32), 0)  # a refusal (unknown bundle) is no progress
    assert server.transfer("port-a") == {"bundle": bid[:16], "offset": 1024, "size": len(data)}
    later = time.monotonic() + TRANSFER_FRESH_S + 1
    monkeypatch.setattr(time, "monotonic", lambda: later)
    assert server.transfer("port-a") is None  # the node stopped asking


def test_refusals_and_malformed(served: tuple[OtaServer, bytes], tmp_path: Path) -> None:
    server, _ = served
    assert _get(server, bytes(32), 0) == (bytes(32), 0, None, "unknown-bundle")
    assert _get(OtaServer(None), bytes(32), 7) == (bytes(32), 7, None, "no-release-key")
    for bad in (b"\xff", cbor2.dumps({1: b"short", 2: 0, 3: 1}), cbor2.dumps({1: bytes(32)})):
        with pytest.raises(MalformedError):
            server.answer("port-a", bad)


def test_gets_are_rate_limited_per_port(served: tuple[OtaServer, bytes]) -> None:
    server, data = served
    get = encode_ota_get(OtaGet(bytes.fromhex(bundle.bundle_id(data)), 0, 16))
    answers = [server.answer("port-b", get) for _ in range(int(GET_BURST) + 10)]
    assert sum(a is None for a in answers) >= 9  # the burst, then dropped unread
    assert server.counts["limited"] >= 9
    assert server.answer("port-c", get) is not None  # another port has its own budget


def test_offer_until_the_device_runs_that_version(served: tuple[OtaServer, bytes]) -> None:
    server, data = served
    bid = bundle.bundle_id(data)
    assert server.offer("node-1", bid)["version"] == "1.2.0"
    body = server.offer_frame("node-1", "1.1.0", False)
    assert body is not None and decode_ota_offer(body) == (bytes.fromhex(bid), len(data))
    assert server.offer_frame("node-1", "1.2.0", True) is None  # on trial: none sent,
    assert server.cache is not None
    again = OtaServer(server.cache)  # but kept; and offers survive a restart (offers.json)
    assert again.offer_frame("node-1", "1.1.0", False) == body
    assert again.offer_frame("node-1", "1.2.0", False) is None  # runs it: done
    assert again.offer_frame("node-1", "1.1.0", False) is None
    with pytest.raises(ValueError, match="not in the cache"):
        server.offer("node-2", "0" * 64)


def test_node_reads_the_gateways_chunks_in_place() -> None:
    if str(FIRMWARE_LIB) not in sys.path:
        sys.path.append(str(FIRMWARE_LIB))
    from citysense import fetch  # type: ignore[import-not-found]

    bid = bytes(range(32))
    for off in (0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1):
        for n in (0, 1, 23, 24, 255, 256, CHUNK_MAX):
            data = bytes((off + i) % 251 for i in range(n))
            m = fetch._chunk(encode_ota_chunk(bid, off, data))
            assert m is not None and (m[1], m[2], bytes(m[3])) == (bid, off, data)
    # any other shape is left to the CBOR decoder
    assert fetch._chunk(cbor2.dumps({1: bid, 2: 0, 4: "unknown-bundle"})) is None
    assert fetch._chunk(cbor2.dumps({2: 0, 1: bid, 3: b"x"})) is None


def test_hello_carries_the_trial_state() -> None:
    from gateway.protocol import Hello, decode_hello, encode_hello

    h = Hello("n1", "1.2.0", 3, "soft", 10, 7, trial=True)
    body = encode_hello(h)
    assert cbor2.loads(body)[9] == "trial"
    assert decode_hello(body) == h
    stable = cbor2.loads(body)
    stable[9] = "stable"
    assert decode_hello(cbor2.dumps(stable)).trial is False
    del stable[9]
    assert decode_hello(cbor2.dumps(stable)).trial is False  # older firmware: no key 9
    stable[9] = "maybe"
    with pytest.raises(MalformedError, match="key 9"):
        decode_hello(cbor2.dumps(stable))


def _disk_full(*_: object, **__: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_refuses_a_new_offer_and_does_not_stop_a_done_one(
    served: tuple[OtaServer, bytes],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """offers.json cannot be written: `ota push` gets a clear error and nothing is
    offered; a device that says HELLO running the offered version (the offer is done)
    is answered as usual: the OSError used to leave the HELLO handler and close the
    node's port (and, from `ota push`, end the agent's request task)."""
    server, data = served
    bid = bundle.bundle_id(data)
    server.offer("node-1", bid)
    monkeypatch.setattr(os, "replace", _disk_full)
    with pytest.raises(ValueError, match=r"cannot save the offer in .*offers.json: .*No space"):
        server.offer("node-2", bid)
    assert sorted(server.offers) == ["node-1"]
    with caplog.at_level(logging.WARNING, logger="citysense.ota"):
        assert server.offer_frame("node-1", "1.2.0", False) is None  # done: no OSError
    assert server.offers == {}
    assert "event=ota-offers-save-failed" in caplog.text
    monkeypatch.undo()
    assert json.loads((server.cache.directory / "offers.json").read_text()) == {  # type: ignore[union-attr]
        "node-1": {"bundle": bid, "size": len(data), "version": "1.2.0"}
    }  # the file on disk is still the last one written whole
