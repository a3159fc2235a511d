"""ca init / broker-cert / gateway-cert: a real Mosquitto with mTLS from these files alone."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prov_support import assert_one_line_error, run_cli
from support import free_port


def _mosquitto() -> str:
    for c in ("/usr/sbin/mosquitto", shutil.which("mosquitto")):
        if c and Path(c).exists():
            return c
    pytest.skip("mosquitto not installed")


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    assert run_cli("ca", "init", "--dir", str(tmp_path / "ca")).code == 0
    res = run_cli(
        "ca",
        "broker-cert",
        "--ca",
        str(tmp_path / "ca"),
        "--out",
        str(tmp_path / "broker"),
        "--dns",
        "localhost",
        "--ip",
        "127.0.0.1",
    )
    assert res.code == 0, res.err
    res = run_cli(
        "gateway-cert",
        "--gateway-id",
        "gw-1",
        "--out",
        str(tmp_path / "gw"),
        "--ca",
        str(tmp_path / "ca"),
    )
    assert res.code == 0, res.err
    return tmp_path


@pytest.fixture
def broker(pki: Path) -> Iterator[int]:
    port = free_port()
    conf = pki / "mosquitto.conf"
    b = pki / "broker"
    conf.write_text(
        # `user root`: keep root so mosquitto reads the 0600 keys in the test's 0700 dirs
        # (a real install chowns broker.key to the mosquitto user instead)
        f"user root\nlistener {port} 127.0.0.1\npersistence false\nlog_dest stdout\n"
        f"cafile {b / 'ca.crt'}\ncertfile {b / 'broker.crt'}\nkeyfile {b / 'broker.key'}\n"
        "require_certificate true\nuse_identity_as_username true\nallow_anonymous false\n"
    )
    log = (pki / "mosquitto.log").open("wb")
    proc = subprocess.Popen([_mosquitto(), "-c", str(conf)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((pki / "mosquitto.log").read_text()) from None
                time.sleep(0.05)
        yield port
    finally:
        proc.kill()
        proc.wait(timeout=10)
        log.close()


def test_files_and_modes(pki: Path) -> None:
    for key in ("ca/ca.key", "broker/broker.key", "gw/gateway.key"):
        assert stat.S_IMODE(os.stat(pki / key).st_mode) == 0o600, key
    ca = x509.load_pem_x509_certificate((pki / "ca" / "ca.crt").read_bytes())
    gw = x509.load_pem_x509_certificate((pki / "gw" / "gateway.crt").read_bytes())
    assert gw.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gw-1"
    gw.verify_directly_issued_by(ca)
    eku = gw.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert (pki / "gw" / "gateway.csr").exists()
    again = run_cli("ca", "init", "--dir", str(pki / "ca"))
    assert_one_line_error(again, "a CA already exists", "refusing to overwrite")


def test_csr_signed_later(pki: Path) -> None:
    """Production flow: key + CSR made without the CA, signed by it afterwards."""
    res = run_cli("gateway-cert", "--gateway-id", "gw-2", "--out", str(pki / "gw2"))
    assert res.code == 0 and not (pki / "gw2" / "gateway.crt").exists()
    res = run_cli(
        "ca",
        "sign",
        "--ca",
        str(pki / "ca"),
        "--csr",
        str(pki / "gw2/gateway.csr"),
        "--out",
        str(pki / "gw2/gateway.crt"),
    )
    assert res.code == 0, res.err
    ca = x509.load_pem_x509_certificate((pki / "ca" / "ca.crt").read_bytes())
    x509.load_pem_x509_certificate(
        (pki / "gw2" / "gateway.crt").read_bytes()
    ).verify_directly_issued_by(ca)


def _client(pki: Path) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t", protocol=mqtt.MQTTv311)
    c.tls_set(
        ca_certs=str(pki / "gw" / "ca.crt"),
        certfile=str(pki / "gw" / "gateway.crt"),
        keyfile=str(pki / "gw" / "gateway.key"),
    )
    return c


def test_mosquitto_mtls(pki: Path, broker: int) -> None:
    got: list[bytes] = []
    done = threading.Event()
    c = _client(pki)

    def on_connect(cl: mqtt.Client, _u: object, _f: object, rc: object, _p: object) -> None:
        cl.subscribe("citysense/v1/gw-1/status", qos=1)

    def on_subscribe(cl: mqtt.Client, *_a: object) -> None:
        cl.publish("citysense/v1/gw-1/status", b"online", qos=1)

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        got.append(msg.payload)
        done.set()

    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    c.connect("localhost", broker)
    c.loop_start()
    try:
        assert done.wait(20), "no round trip through the mTLS broker"
    finally:
        c.loop_stop()
        c.disconnect()
    assert got == [b"online"]

    # a client without a certificate never gets a CONNACK: the TLS layer refuses it
    ctx = ssl.create_default_context(cafile=str(pki / "gw" / "ca.crt"))
    outcome: str
    try:
        with socket.create_connection(("127.0.0.1", broker), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(CONNECT)
                data = tls.recv(4)
                outcome = "closed" if data == b"" else f"answered {data!r}"
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
        outcome = "closed"  # the broker dropped the connection (race with its alert)
    except ssl.SSLError as exc:
        outcome = "refused" if exc.reason in REFUSALS else f"ssl error {exc!r}"
    except ConnectionResetError:
        outcome = "closed"
    assert outcome in ("refused", "closed")


# MQTT 3.1.1 CONNECT, clean session, keepalive 60, client id "t"
CONNECT = bytes.fromhex("100d00044d5154540402003c000174")
REFUSALS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    "SSLV3_ALERT_HANDSHAKE_FAILURE",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE",
}


def test_gateway_id_follows_the_device_id_rule(tmp_path: Path) -> None:
    """The CN becomes the MQTT user and the topic level: '+', '#', '/' refused."""
    for bad in ("gw+1", "gw#1", "site/gw"):
        res = run_cli("gateway-cert", "--gateway-id", bad, "--out", str(tmp_path / "gw"))
        assert_one_line_error(res, f"invalid gateway id {bad!r}: use 1-64 letters")
    assert not (tmp_path / "gw").exists()
