"""Cross-implementation tests: the firmware codec under the real MicroPython against the
gateway's protocol core (cbor2 + cryptography) and pycose as an independent judge."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pycose.keys import OKPKey
from pycose.keys.curves import Ed25519
from pycose.messages import CoseMessage, Sign1Message
from support import run_micropython

import gateway.protocol as gp

MP_CROSS = Path(__file__).with_name("mp_cross.py")

SEED_A = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
SEED_B = bytes.fromhex("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7")
OPERATOR_SEED = bytes.fromhex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
KID_A = "esp32-a1b2c3d4e5f6"
KID_B = "esp32-0badc0ffee00"
BASE_TIME = 1764047000


def public(seed: bytes) -> bytes:
    key = Ed25519PrivateKey.from_private_bytes(seed).public_key()
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


PUB_A, PUB_B, OPERATOR_PUB = public(SEED_A), public(SEED_B), public(OPERATOR_SEED)


def mp(mpy_lib: Path, mode: str, lines: list[str], raw: bytes | None = None) -> list[str]:
    """Run tests/firmware/mp_cross.py MODE under micropython (64 KB heap)."""
    proc = run_micropython(
        [str(MP_CROSS), *mode.split()],
        heap="64k",
        extra_path=[mpy_lib],
        stdin=raw if raw is not None else ("\n".join(lines) + "\n").encode(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    return proc.stdout.decode().splitlines()


def reading_value(i: int) -> float | int:
    """Mirror of mp_cross.reading_value."""
    return 20.0 + i * 0.25 if i % 2 == 0 else 1000 + i


def expected_pack(kid: str, n: int) -> list[dict[int, Any]]:
    pack: list[dict[int, Any]] = []
    for i in range(n):
        rec: dict[int, Any] = {0: "temp" if i % 2 == 0 else "sys/heap_free"}
        rec[2] = reading_value(i)
        rec[6] = i
        if i == 0:
            rec[-2] = kid + "/"
            rec[-3] = BASE_TIME
        pack.append(rec)
    return pack


def gateway_accepts(pub: bytes, data: bytes, kid: bytes) -> bool:
    """The gateway's rule: the kid names the key, and the record verifies under it."""
    try:
        got_kid, _ = gp.verify1(pub, data)
    except gp.ProtocolError:
        return False
    return got_kid == kid


def pycose_accepts(pub: bytes, data: bytes, kid: bytes) -> bool:
    try:
        msg = CoseMessage.decode(data)
        if not isinstance(msg, Sign1Message):
            return False
        alg = {getattr(k, "identifier", k): v for k, v in msg.phdr.items()}.get(1)
        if getattr(alg, "identifier", alg) != -8:
            return False
        uhdr = {getattr(k, "identifier", k): v for k, v in msg.uhdr.items()}
        if uhdr.get(4) != kid:
            return False
        msg.key = OKPKey(crv=Ed25519, x=pub)
        return bool(msg.verify_signature())
    except Exception:
        return False


RECORD_CASES = [
    (SEED_A, KID_A, 1, 1, 1, 0),
    (SEED_A, KID_A, 2, 1, 10, 0),
    (SEED_A, KID_A, 3, 1, 30, 1),
    (SEED_B, KID_B, 2**40, 0, 2, 1),
    (SEED_B, KID_B, 2**64 - 1, 2**32, 7, 0),
]


@pytest.fixture(scope="module")
def fw_records(mpy_lib: Path) -> list[bytes]:
    lines = [f"{s.hex()} {k} {q} {b} {n} {t}" for s, k, q, b, n, t in RECORD_CASES]
    out = mp(mpy_lib, "records", lines)
    assert len(out) == len(RECORD_CASES)
    return [bytes.fromhex(line) for line in out]


def test_firmware_records_verify_in_gateway_and_pycose(fw_records: list[bytes]) -> None:
    for (seed, kid, seq, boot, n, tb), data in zip(RECORD_CASES, fw_records, strict=True):
        pub = public(seed)
        # byte-exact with the gateway's own signer (Ed25519 is deterministic)
        payload = cbor2.dumps({1: seq, 2: boot, 3: expected_pack(kid, n), 4: tb}, canonical=True)
        assert data == gp.sign1(seed, kid.encode(), payload)
        assert gp.verify1(pub, data) == (kid.encode(), payload)
        rec = gp.decode_record_payload(payload)
        assert rec == gp.RecordPayload(seq, boot, expected_pack(kid, n), tb)
        assert pycose_accepts(pub, data, kid.encode())
        assert len(data) <= gp.MAX_FRAME - 5  # fits one RECORD frame


def test_forged_and_truncated_records_rejected_by_all(
    mpy_lib: Path, fw_records: list[bytes]
) -> None:
    data = fw_records[1]
    kid = KID_A.encode()
    n = len(data)
    for i in range(n):
        forged = bytearray(data)
        forged[i] ^= 1 << (i % 8)
        assert not gateway_accepts(PUB_A, bytes(forged), kid), f"gateway, byte {i}"
        assert not pycose_accepts(PUB_A, bytes(forged), kid), f"pycose, byte {i}"
    for cut in range(n):
        assert not gateway_accepts(PUB_A, data[:cut], kid), f"gateway, cut {cut}"
        assert not pycose_accepts(PUB_A, data[:cut], kid), f"pycose, cut {cut}"
    out = mp(mpy_lib, "forge", [f"{PUB_A.hex()} {KID_A} {data.hex()}"])
    assert len(out) == 2 * n
    for i, line in enumerate(out[:n]):
        assert line.startswith(f"flip {i} err "), line
    for cut, line in enumerate(out[n:]):
        assert line.startswith(f"cut {cut} err "), line
    reasons = {line.split()[-1] for line in out}
    assert reasons <= {"malformed", "alg", "kid", "bad-signature"}
    assert {"malformed", "bad-signature"} <= reasons


def test_wrong_kid_rejected_by_all(mpy_lib: Path) -> None:
    # device A's key, claiming to be device B: B's key does not verify it
    (line,) = mp(mpy_lib, "records", [f"{SEED_A.hex()} {KID_B} 5 1 3 0"])
    data = bytes.fromhex(line)
    kid_b = KID_B.encode()
    with pytest.raises(gp.SignatureError):
        gp.verify1(PUB_B, data)
    assert not pycose_accepts(PUB_B, data, kid_b)
    out = mp(
        mpy_lib,
        "verify",
        [f"{PUB_B.hex()} {KID_B} {data.hex()}", f"{PUB_A.hex()} {KID_A} {data.hex()}"],
    )
    assert out == ["err bad-signature", "err kid"]


def _signed_with_protected(protected: bytes, payload: bytes) -> bytes:
    key = Ed25519PrivateKey.from_private_bytes(SEED_A)
    sig = key.sign(cbor2.dumps(["Signature1", protected, b"", payload]))
    return cbor2.dumps(cbor2.CBORTag(18, [protected, {4: KID_A.encode()}, payload, sig]))


def test_wrong_alg_rejected_by_all(mpy_lib: Path) -> None:
    payload = cbor2.dumps({1: 1, 2: 1, 3: expected_pack(KID_A, 1), 4: 0})
    cases = [
        cbor2.dumps({1: -7}),  # ES256
        cbor2.dumps({}),
        b"",
        cbor2.dumps({1: -8, 3: 0}),  # valid COSE, but protocol v1 fixes {1: -8} alone
    ]
    lines = []
    for protected in cases:
        data = _signed_with_protected(protected, payload)
        with pytest.raises(gp.ProtocolError) as err:
            gp.verify1(PUB_A, data)
        assert err.value.reason in {"alg", "malformed"}
        if len(protected) != 5:  # pycose rightly accepts the extra content-type header
            assert not pycose_accepts(PUB_A, data, KID_A.encode())
        lines.append(f"{PUB_A.hex()} {KID_A} {data.hex()}")
    # the control: the right protected header verifies everywhere
    good = _signed_with_protected(b"\xa1\x01\x27", payload)
    assert pycose_accepts(PUB_A, good, KID_A.encode())
    lines.append(f"{PUB_A.hex()} {KID_A} {good.hex()}")
    out = mp(mpy_lib, "verify", lines)
    assert out == ["err alg"] * 4 + [f"ok {KID_A.encode().hex()} {payload.hex()}"]


def test_gateway_commands_verify_in_firmware(mpy_lib: Path) -> None:
    commands = [
        gp.Command(1, "reboot", {}, "a", "*", 1),
        gp.Command(7, "set-interval", {"interval_s": 60}, KID_A, "gw-01", 1764047600000),
        gp.Command(2**32, "x", {1: [1, 2], "k": b"\x00"}, "b" * 64, "g", 2**64 - 1),
    ]
    signed = [gp.sign_command(OPERATOR_SEED, cmd) for cmd in commands]
    lines = [f"{OPERATOR_PUB.hex()} operator {data.hex()}" for data in signed]
    forged = bytearray(signed[0])
    forged[-1] ^= 0x01
    lines.append(f"{OPERATOR_PUB.hex()} operator {forged.hex()}")
    lines.append(f"{PUB_A.hex()} operator {signed[0].hex()}")  # not the operator key
    by_device = gp.sign_command(SEED_A, commands[0], kid=b"operator")
    lines.append(f"{OPERATOR_PUB.hex()} operator {by_device.hex()}")
    wrong_kid = gp.sign_command(OPERATOR_SEED, commands[0], kid=b"operat0r")
    lines.append(f"{OPERATOR_PUB.hex()} operator {wrong_kid.hex()}")
    out = mp(mpy_lib, "verify", lines)
    want = []
    for cmd in commands:
        payload = cbor2.dumps(
            {
                1: cmd.command_id,
                2: cmd.action,
                3: cmd.args,
                4: cmd.device_id,
                5: cmd.gateway_id,
                6: cmd.expires_ms,
            }
        )
        want.append(f"ok {b'operator'.hex()} {payload.hex()}")
    want += ["err bad-signature", "err bad-signature", "err bad-signature", "err kid"]
    assert out == want


FRAME_CASES: list[tuple[int, bytes]] = [
    (gp.FrameType.ACK, cbor2.dumps({1: 5})),
    (gp.FrameType.NACK, cbor2.dumps({1: 9, 2: "busy"})),
    (gp.FrameType.TIME, cbor2.dumps({1: 1764047000123})),
    (gp.FrameType.RECORD, bytes(range(256)) * 2),
    (gp.FrameType.COMMAND, b""),
    (gp.FrameType.COMMAND_RESULT, b"\x00" * 1019),
    (gp.FrameType.HELLO, bytes(i % 254 + 1 for i in range(1019))),
]


def test_firmware_frames_decode_in_gateway(mpy_lib: Path, fw_records: list[bytes]) -> None:
    cases = [*FRAME_CASES, *((gp.FrameType.RECORD, rec) for rec in fw_records)]
    hello = gp.Hello("esp32-a1b2c3d4e5f6", "0.1.0", 3, "power-on", 1234, 77, "config-missing")
    cases.append((gp.FrameType.HELLO, gp.encode_hello(hello)))
    out = mp(mpy_lib, "frames", [f"{int(t)} {body.hex()}" for t, body in cases])
    wires = [bytes.fromhex(line) for line in out]
    assert wires == [gp.encode_frame(t, body) for t, body in cases]  # byte-exact
    stream = b"".join(wires)
    for step in (len(stream), 1, 13):
        dec = gp.FrameDecoder()
        got: list[gp.Frame] = []
        for start in range(0, len(stream), step):
            dec.feed(stream[start : start + step])
            while (frame := dec.next_frame()) is not None:
                got.append(frame)
        assert got == [gp.Frame(gp.FrameType(t), body) for t, body in cases]
    assert gp.decode_hello(got[-1].body) == hello


def test_gateway_frames_decode_in_firmware(mpy_lib: Path) -> None:
    ack = gp.encode_frame(gp.FrameType.ACK, cbor2.dumps({1: 5}))
    bad_crc = bytearray(ack)
    bad_crc[3] ^= 0x40
    stream = b"\x00\x00" + b"".join(gp.encode_frame(t, body) for t, body in FRAME_CASES)
    stream += b"\x05\x01\x02\x00" + ack + bytes(bad_crc) + b"\x00" * 9 + ack
    stream += b"\x01" * 1500 + b"\x00" + gp.encode_frame(0x0B, b"\xa0") + ack
    # the gateway's own decoder sets the expectation, reasons included
    dec = gp.FrameDecoder()
    dec.feed(stream)
    want = []
    for item in dec.frames():
        if isinstance(item, gp.ProtocolError):
            want.append("!" + item.reason)
        else:
            want.append(f"{int(item.type)} {item.body.hex()}")
    assert want[len(FRAME_CASES) :] == [
        "!framing",
        "3 a10105",
        "!crc",
        "3 a10105",
        "!oversize",
        "!unknown-type",
        "3 a10105",
    ]
    for chunk in (len(stream), 1, 7, 64):
        assert mp(mpy_lib, f"decode {chunk}", [], raw=stream) == [*want, "end"], chunk
