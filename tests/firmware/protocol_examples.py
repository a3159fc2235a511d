"""The hex examples of docs/protocol.md, generated from the code.

`python tests/firmware/protocol_examples.py` prints every example as the doc shows it;
test_protocol_doc.py checks that the doc still says exactly this.
"""

from __future__ import annotations

import cbor2

import gateway.protocol as gp

# RFC 8032 section 7.1 TEST 1 and TEST 2 secrets: public test keys, never used in the field
DEVICE_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
OPERATOR_SEED = bytes.fromhex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
DEVICE_ID = "esp32-a1b2c3d4e5f6"


def record_payload() -> bytes:
    pack = [
        {-2: DEVICE_ID + "/", -3: 1764047000, 0: "temp", 1: "Cel", 2: 21.5, 6: 0},
        {0: "hum", 1: "%RH", 2: 40, 6: 0},
        {0: "sys/heap_free", 1: "B", 2: 48128, 6: 10},
    ]
    return cbor2.dumps({1: 42, 2: 3, 3: pack, 4: 0}, canonical=True)


def examples() -> dict[str, bytes]:
    hello = gp.Hello(DEVICE_ID, "0.1.0", 3, "power-on", 1234, 41)
    hello_problem = gp.Hello(DEVICE_ID, "0.1.0", 1, "power-on", 80, 0, "config-missing")
    payload = record_payload()
    record = gp.sign1(DEVICE_SEED, DEVICE_ID.encode(), payload)
    command = gp.sign_command(
        OPERATOR_SEED,
        gp.Command(7, "set_interval", {"interval_s": 60}, DEVICE_ID, "gw-01", 1764047600000),
    )
    result = gp.sign_command_result(
        DEVICE_SEED, DEVICE_ID.encode(), gp.CommandResult(7, True, "interval 60 s")
    )
    out = {
        "hello-body": gp.encode_hello(hello),
        "hello-frame": gp.encode_frame(gp.FrameType.HELLO, gp.encode_hello(hello)),
        "hello-problem-body": gp.encode_hello(hello_problem),
        "ack-body": gp.encode_ack(42),
        "ack-frame": gp.encode_frame(gp.FrameType.ACK, gp.encode_ack(42)),
        "nack-body": gp.encode_nack(43, gp.NackReason.BUSY),
        "time-body": gp.encode_time(1764047000123),
        "record-payload": payload,
        "sig-structure": gp.sig_structure(b"\xa1\x01\x27", payload),
        "record-cose": record,
        "record-frame": gp.encode_frame(gp.FrameType.RECORD, record),
        "command-cose": command,
        "command-result-cose": result,
    }
    return out


def wrap(data: bytes, width: int = 64) -> str:
    text = data.hex()
    return "\n".join(text[i : i + width] for i in range(0, len(text), width))


def render() -> str:
    parts = []
    for name, data in examples().items():
        parts.append(f"<!-- example: {name} -->\n```\n{wrap(data)}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    print(render())
