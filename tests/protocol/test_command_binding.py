"""The gateway's checks on a COMMAND before the serial line (gateway/protocol/commands.py)
and the firmware's action table matching the one the command tool uses."""

from __future__ import annotations

import sys

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from support import FIRMWARE_LIB

from gateway.protocol import (
    ACTIONS,
    ANY_GATEWAY,
    OPERATOR_KID,
    REFUSALS,
    Command,
    check_command,
    decode_gateway_refusal,
    gateway_refusal,
    sign1,
    sign_command,
)

OP = bytes(range(100, 132))
OP_PUB = (
    Ed25519PrivateKey.from_private_bytes(OP)
    .public_key()
    .public_bytes(Encoding.Raw, PublicFormat.Raw)
)
NOW = 1_764_047_000_000


def signed(device: str = "node-a", gateway: str = "gw-01", expires: int = NOW + 1) -> bytes:
    return sign_command(OP, Command(9, "sync_now", {}, device, gateway, expires))


@pytest.mark.parametrize(
    ("payload", "device", "protocol", "outcome"),
    [
        (signed(), "node-a", 2, "ok"),
        (signed(gateway=ANY_GATEWAY), "node-a", 2, "ok"),
        (signed(), "node-a", None, "ok"),  # no HELLO seen since the gateway started
        (signed(), "node-b", 2, "wrong-device"),  # A's command republished on B's topic
        (signed(gateway="gw-02"), "node-a", 2, "wrong-gateway"),
        (signed(expires=NOW), "node-a", 2, "expired"),
        (signed(), "node-a", 1, "old-firmware"),
        (sign1(OP, OPERATOR_KID, cbor2.dumps({1: 9, 2: "sync_now", 3: {}})), "node-a", 2,
         "unbound"),
        (sign_command(bytes(32), Command(9, "reboot", {}, "node-a", "gw-01", NOW + 1)),
         "node-a", 2, "bad-signature"),
    ],
)  # fmt: skip
def test_check_command(payload: bytes, device: str, protocol: int | None, outcome: str) -> None:
    assert check_command(OP_PUB, payload, device, "gw-01", protocol, NOW) == outcome
    assert outcome == "ok" or outcome in REFUSALS


def test_gateway_refusal_names_the_command() -> None:
    body = gateway_refusal(signed(), "wrong-device", "gw-01")
    assert body.startswith(b"{")
    assert decode_gateway_refusal(body) == {
        "gateway": "gw-01",
        "command_id": 9,
        "refused": "wrong-device",
        "detail": "signed for another device than the topic's",
    }
    assert decode_gateway_refusal(signed()) is None  # COSE: not a refusal
    assert decode_gateway_refusal(b"{not json") is None


def test_firmware_actions_are_the_tools_actions() -> None:
    if str(FIRMWARE_LIB) not in sys.path:
        sys.path.append(str(FIRMWARE_LIB))
    from citysense import commands  # type: ignore[import-not-found]

    assert set(commands.ACTIONS) == set(ACTIONS)
    for action, spec in ACTIONS.items():
        fw = commands.ACTIONS[action]
        if not spec:
            assert fw is None
            continue
        if len(spec[0]) == 2:  # a text argument: the bundle id of `update`
            assert fw[0] == spec[0][0] == "bundle"
            cases = ("ab" * 32, "AB" * 32, "ab" * 31, "ab" * 33, 5, "g" * 64)
            assert [fw[1](v) for v in cases] == [True, False, False, False, False, False]
            continue
        ((name, lo, hi),) = spec
        assert fw[0] == name
        assert [fw[1](v) for v in (lo - 1, lo, hi, hi + 1, True, "1")] == [
            False, True, True, False, False, False
        ]  # fmt: skip
