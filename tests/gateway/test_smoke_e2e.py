"""End to end over a real pty and a real (plain) Mosquitto: frames in, same bytes out."""

from __future__ import annotations

import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from gwsupport import (
    Pty,
    Subscriber,
    make_node,
    mosquitto,
    start_gateway,
    stop,
    wait_log,
    write_config,
    write_entry,
)

from gateway.protocol import FrameType, NackReason, decode_ack, decode_nack, parse_sign1


def test_records_arrive_byte_identical(tmp_path: Path) -> None:
    node = make_node("esp32-000000000001")
    with mosquitto(tmp_path / "broker") as broker:
        cfg = write_config(tmp_path / "gw.toml", url=f'"mqtt://127.0.0.1:{broker.port}"')
        write_entry(tmp_path / "registry", node)
        pty = Pty(tmp_path / "tty0")
        sub = Subscriber(broker.port, "citysense/#")
        gw = start_gateway(cfg, tmp_path / "gw.log")
        try:
            wait_log(tmp_path / "gw.log", "event=port-open")
            pty.write(node.hello_frame())
            pty.wait_for(lambda fs: any(f.type == FrameType.TIME for f in fs))
            sent = [node.record(seq) for seq in range(1, 21)]
            for seq in range(1, 21):
                pty.write(node.record_frame(seq))
            pty.wait_for(
                lambda fs: any(f.type == FrameType.ACK and decode_ack(f.body) == 20 for f in fs)
            )
            got = sub.wait_count("/records", 20)
            payloads = [m[1] for m in got]
            assert payloads == sent  # byte-identical and in seq order
            pub = Ed25519PublicKey.from_public_bytes(node.public_key)
            for m in got:
                assert m[0] == f"citysense/v1/gw-test/{node.device_id}/records"
                msg = parse_sign1(m[1])
                pub.verify(msg.signature, msg.to_be_signed())
            # revocation takes effect within a second (the registry is polled every 0.5 s)
            write_entry(tmp_path / "registry", node, status="revoked")
            time.sleep(1.2)
            pty.write(node.record_frame(21))
            frames = pty.wait_for(lambda fs: any(f.type == FrameType.NACK for f in fs))
            assert [decode_nack(f.body) for f in frames if f.type == FrameType.NACK] == [
                (0, NackReason.REVOKED)
            ]
        finally:
            sub.close()
            stop(gw)
            pty.close()
