"""docs/protocol.md's hex examples are exactly what the code produces, on both sides."""

from __future__ import annotations

import re
import sys

import pytest
from protocol_examples import DEVICE_ID, DEVICE_SEED, OPERATOR_SEED, examples
from support import FIRMWARE_LIB, REPO

import gateway.protocol as gp

if str(FIRMWARE_LIB) not in sys.path:
    sys.path.append(str(FIRMWARE_LIB))

from citysense import cbor, cose, ed25519, frame, senml  # type: ignore[import-not-found]

DOC = REPO / "docs" / "protocol.md"
BLOCK = re.compile(r"<!-- example: ([a-z0-9-]+) -->\n```\n([0-9a-f\n]+)\n```")


def doc_examples() -> dict[str, bytes]:
    found = BLOCK.findall(DOC.read_text())
    names = [name for name, _ in found]
    assert len(names) == len(set(names)), "an example name is used twice"
    return {name: bytes.fromhex(text.replace("\n", "")) for name, text in found}


def test_doc_shows_exactly_the_generated_examples() -> None:
    assert doc_examples() == examples()


def test_firmware_produces_the_doc_bytes() -> None:
    ex = doc_examples()
    pack = senml.Pack(base_name=DEVICE_ID + "/", base_time=1764047000)
    pack.add("temp", 21.5, unit="Cel", time=0).add("hum", 40, unit="%RH", time=0)
    pack.add("sys/heap_free", 48128, unit="B", time=10)
    payload = senml.record_payload(42, 3, pack, senml.TIME_UNIX)
    assert payload == ex["record-payload"]
    assert cose.sig_structure(cose.PROTECTED, payload) == ex["sig-structure"]
    record = cose.sign1(DEVICE_SEED, DEVICE_ID.encode(), payload)
    assert record == ex["record-cose"]
    assert frame.encode(frame.RECORD, record) == ex["record-frame"]
    assert frame.encode(frame.ACK, cbor.dumps({1: 42})) == ex["ack-frame"]
    hello = {1: 2, 2: DEVICE_ID, 3: "0.1.0", 4: 3, 5: "power-on", 6: 1234, 7: 41}
    assert cbor.dumps(hello) == ex["hello-body"]
    assert frame.encode(frame.HELLO, cbor.dumps(hello)) == ex["hello-frame"]
    hello.update({4: 1, 6: 80, 7: 0, 8: "config-missing"})
    assert cbor.dumps(hello) == ex["hello-problem-body"]
    assert cbor.dumps({1: 43, 2: "busy"}) == ex["nack-body"]
    assert cbor.loads(ex["time-body"]) == {1: 1764047000123}
    result = cbor.dumps({1: 7, 2: True, 3: "interval 60 s"})
    assert cose.sign1(DEVICE_SEED, DEVICE_ID.encode(), result) == ex["command-result-cose"]
    operator_pub = ed25519.public_key(OPERATOR_SEED)
    kid, cmd = cose.verify1(operator_pub, ex["command-cose"], b"operator")
    assert (kid, cbor.loads(cmd)) == (
        b"operator",
        {
            1: 7,
            2: "set_interval",
            3: {"interval_s": 60},
            4: DEVICE_ID,
            5: "gw-01",
            6: 1764047600000,
        },
    )


@pytest.mark.parametrize("name", ["ack-frame", "hello-frame", "record-frame"])
def test_doc_frames_decode_in_both_decoders(name: str) -> None:
    wire = doc_examples()[name]
    dec = gp.FrameDecoder()
    dec.feed(wire)
    got = dec.next_frame()
    assert got is not None
    fdec = frame.Decoder()
    fdec.feed(wire)
    assert fdec.next_frame() == (int(got.type), got.body)
