"""Against a real Mosquitto with TLS client certs and an ACL: records, properties, status,
commands down (operator-signed) and results up, `status`, metrics."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from gwsupport import (
    Pty,
    Subscriber,
    make_node,
    make_pki,
    mosquitto,
    scrape,
    start_gateway,
    stop,
    wait_log,
    write_config,
    write_entry,
)
from support import REPO, free_port

from gateway.protocol import (
    Command,
    CommandResult,
    FrameType,
    decode_ack,
    decode_record_payload,
    encode_frame,
    parse_sign1,
    sign_command,
    sign_command_result,
)


def test_tls_records_commands_status(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", "gw-test")
    node = make_node("esp32-00000000000a")
    operator_seed = b"\x07" * 32
    op_raw = (
        Ed25519PrivateKey.from_private_bytes(operator_seed)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    (tmp_path / "operator.pub").write_text(op_raw.hex() + "\n")
    metrics_port = free_port()
    with mosquitto(tmp_path / "broker", tls=pki) as broker:
        cfg = write_config(
            tmp_path / "gw.toml",
            url=f'"mqtts://127.0.0.1:{broker.port}"',
            listen=f'"127.0.0.1:{metrics_port}"',
            extra_uplink=(
                f'ca_file = "{pki["ca"]}"\ncert_file = "{pki["gw-test_cert"]}"\n'
                f'key_file = "{pki["gw-test_key"]}"\n'
            ),
            extra_gateway=f'operator_key = "{tmp_path / "operator.pub"}"',
        )
        write_entry(tmp_path / "registry", node)
        pty = Pty(tmp_path / "tty0")
        sub = Subscriber(broker.port, "citysense/#", tls=pki)
        log = tmp_path / "gw.log"
        gw = start_gateway(cfg, log)
        try:
            wait_log(log, "event=port-open")
            wait_log(log, "event=uplink-connected")
            pty.write(node.hello_frame(boot=3, uptime_ms=60_000))
            pty.wait_for(lambda fs: any(f.type == FrameType.TIME for f in fs))
            t_hello = time.time()
            sent = [node.record(s, boot=3, time_base=1) for s in range(1, 11)]
            for s in range(1, 11):
                pty.write(node.record_frame(s, boot=3, time_base=1))
            pty.wait_for(
                lambda fs: any(f.type == FrameType.ACK and decode_ack(f.body) == 10 for f in fs)
            )
            got = sub.wait_count("/records", 10)
            assert [m[1] for m in got] == sent
            pub = Ed25519PublicKey.from_public_bytes(node.public_key)
            for topic, payload, props in got:
                assert topic == f"citysense/v1/gw-test/{node.device_id}/records"
                msg = parse_sign1(payload)
                pub.verify(msg.signature, msg.to_be_signed())
                assert props.ContentType == 'application/cose; cose-type="cose-sign1"'  # type: ignore[attr-defined]
                user = dict(props.UserProperty)  # type: ignore[attr-defined]
                assert set(user) == {"gw-received-ms", "resolved-time"}
                # SenML t = seq seconds since boot; boot started ~60 s before the HELLO
                seq = decode_record_payload(msg.payload).seq
                resolved = float(user["resolved-time"])
                assert abs(resolved - (t_hello - 60 + seq)) < 5
            status = sub.wait_count("/gw-test/status", 1)
            assert json.loads(status[-1][1])["state"] == "online"

            # downlink: a good command reaches the node byte for byte; a forged one does not
            far = int(time.time() * 1000) + 600_000
            dev = node.device_id
            good = sign_command(
                operator_seed, Command(7, "set-interval", {"s": 30}, dev, "gw-test", far)
            )
            forged = sign_command(b"\x08" * 32, Command(8, "reboot", {}, dev, "gw-test", far))
            topic = f"citysense/v1/gw-test/{node.device_id}/commands"
            sub.client.publish(topic, forged, qos=1)
            sub.client.publish(topic, good, qos=1)
            frames = pty.wait_for(lambda fs: any(f.type == FrameType.COMMAND for f in fs))
            assert [f.body for f in frames if f.type == FrameType.COMMAND] == [good]
            result = sign_command_result(
                node.seed, node.device_id.encode(), CommandResult(7, True, "interval 30 s")
            )
            pty.write(encode_frame(FrameType.COMMAND_RESULT, result))
            res = sub.wait_count("/command-results", 2)
            assert {m[0] for m in res} == {f"citysense/v1/gw-test/{dev}/command-results"}
            # the forged one: refused by the gateway, which says so (unsigned: no device key)
            assert json.loads(res[0][1]) == {
                "gateway": "gw-test",
                "command_id": 8,
                "refused": "bad-signature",
                "detail": "not signed by the operator key this gateway trusts",
            }
            assert res[1][1] == result

            m = scrape(metrics_port)
            assert m["citysense_records_accepted_total"] == 10
            assert m["citysense_records_published_total"] == 10
            assert m['citysense_commands_total{outcome="delivered"}'] == 1
            assert m['citysense_commands_total{outcome="bad-signature"}'] == 1
            assert m['citysense_frames_total{type="RECORD"}'] == 10
            assert m["citysense_uplink_connected"] == 1

            time.sleep(1.5)  # the state file is rewritten every second
            st = subprocess.run(
                [sys.executable, "-m", "gateway.cli", "status", "--config", str(cfg), "--json"],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert st.returncode == 0, st.stderr
            s = json.loads(st.stdout)
            assert s["running"] is True and s["uplink"]["state"] == "connected"
            assert s["devices"][node.device_id]["seq"] == 10
            assert s["devices"][node.device_id]["port"] == str(tmp_path / "tty0")
            assert s["queue_db"]["depth"] == 0
            code = stop(gw)
            assert code == 0
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                states = [
                    json.loads(m[1])["state"] for m in sub.snapshot() if m[0].endswith("/status")
                ]
                if states[-1] == "offline":
                    break
                time.sleep(0.05)
            assert states[-1] == "offline"  # a clean stop says so (the will covers crashes)
        finally:
            sub.close()
            stop(gw)
            pty.close()
