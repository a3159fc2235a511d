"""gateway/mqttclient.py, the uplink's own MQTT client: against a real Mosquitto (both
protocol versions, mTLS, a refusing ACL, commands in) and against a scripted broker on
loopback for what a real one does not do on request (a small Receive Maximum, a
Maximum Packet Size, malformed or hostile packets, silence, a DISCONNECT)."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from gwsupport import Subscriber, make_pki, mosquitto

from gateway import mqttwire as wire
from gateway.mqttclient import MqttClient, MqttConnectError, MqttError, MqttVersion
from gateway.mqttprops import record_properties

GW = "gw-mqttclient"


def _run(coro: Awaitable[None], limit: float = 60) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(limit):
            await coro

    asyncio.run(bounded())


# -- against Mosquitto -----------------------------------------------------------------
@pytest.mark.parametrize("version", [MqttVersion.V5, MqttVersion.V311])
def test_publishes_in_order_with_properties_and_every_puback(
    tmp_path: Path, version: MqttVersion
) -> None:
    with mosquitto(tmp_path / "b") as broker:
        sub = Subscriber(broker.port, "citysense/#")
        try:

            async def go() -> None:
                props = record_properties("text/x", [("gw-received-ms", "7")])
                will = wire.Will(f"citysense/v1/{GW}/status", b"offline")
                client = MqttClient(
                    "127.0.0.1", broker.port, client_id="c1", protocol=version, will=will
                )
                async with client:
                    futs = [
                        client.publish_future(
                            f"citysense/v1/{GW}/d{i % 3}/records", b"p%d" % i, properties=props
                        )
                        for i in range(500)
                    ]
                    codes = await asyncio.gather(*futs)
                assert codes == [0] * 500

            _run(go())
            got = sub.wait_count("/records", 500)
            assert [p for _, p, _ in got] == [b"p%d" % i for i in range(500)]
            assert got[4][0] == f"citysense/v1/{GW}/d1/records"
            if version == MqttVersion.V5:
                assert got[0][2].ContentType == "text/x"  # type: ignore[attr-defined]
                assert got[0][2].UserProperty == [("gw-received-ms", "7")]  # type: ignore[attr-defined]
            time.sleep(0.3)
            assert not [m for m in sub.snapshot() if m[0].endswith("/status")]  # clean exit
        finally:
            sub.close()


def test_mtls_and_an_acl_refusal_is_its_puback_code(tmp_path: Path) -> None:
    """Mosquitto 2.0.11 closes the connection right after a refusing PUBACK: the code
    must still reach the publish's future, and the next connection works."""
    pki = make_pki(tmp_path / "pki", GW)
    import ssl

    with mosquitto(tmp_path / "b", tls=pki) as broker:

        async def go() -> None:
            ctx = ssl.create_default_context(cafile=str(pki["ca"]))
            ctx.load_cert_chain(str(pki[f"{GW}_cert"]), str(pki[f"{GW}_key"]))
            async with MqttClient(
                "127.0.0.1", broker.port, client_id=GW, tls_context=ctx
            ) as client:
                ok = await client.publish_acked(f"citysense/v1/{GW}/d/records", b"a")
                denied = await client.publish_acked("citysense/v1/other-gw/d/records", b"b")
                assert (ok, denied) == (0x10, 0x87)  # no subscriber: a success code
            async with MqttClient(
                "127.0.0.1", broker.port, client_id=GW, tls_context=ctx
            ) as client:
                assert await client.publish_acked(f"citysense/v1/{GW}/d/records", b"c") == 0x10

        _run(go())


def test_a_refused_tls_handshake_is_an_mqtt_error(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", GW)
    import ssl

    with mosquitto(tmp_path / "b", tls=pki) as broker:

        async def go() -> None:
            ctx = ssl.create_default_context(cafile=str(pki["ca"]))  # no client certificate
            with pytest.raises(MqttError):
                async with MqttClient("127.0.0.1", broker.port, client_id=GW, tls_context=ctx):
                    pass

        _run(go())


def test_received_qos1_is_handed_on_then_acknowledged(tmp_path: Path) -> None:
    with mosquitto(tmp_path / "b") as broker:

        async def go() -> None:
            async with MqttClient("127.0.0.1", broker.port, client_id="rx") as client:
                assert await client.subscribe(f"citysense/v1/{GW}/+/commands") == (1,)
                async with MqttClient("127.0.0.1", broker.port, client_id="tx") as tx:
                    for i in range(3):
                        await tx.publish_acked(f"citysense/v1/{GW}/d{i}/commands", b"c%d" % i)
                got = []
                async for m in client.messages:
                    got.append((m.topic, m.payload, m.qos))
                    if len(got) == 3:
                        break
                want = [(f"citysense/v1/{GW}/d{i}/commands", b"c%d" % i, 1) for i in range(3)]
                assert got == want

        _run(go())


def test_bad_topics_and_sizes_are_value_errors_and_the_session_goes_on(tmp_path: Path) -> None:
    with mosquitto(tmp_path / "b") as broker:

        async def go() -> None:
            async with MqttClient("127.0.0.1", broker.port, client_id="v") as client:
                for topic in ("a/+/b", "a/#", "", "a\x00b", "x" * 70000):
                    with pytest.raises(ValueError):
                        client.publish_future(topic, b"p")
                assert await client.publish_acked("a/b", b"p") == 0x10  # no subscribers

        _run(go())


def test_refused_tcp_connection_is_an_mqtt_error() -> None:
    from support import free_port

    async def go() -> None:
        with pytest.raises(MqttError, match=r"Connect call failed|refused"):
            async with MqttClient("127.0.0.1", free_port(), client_id="x", timeout=3):
                pass

    _run(go())


# -- against a scripted broker ---------------------------------------------------------
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_packet(r: asyncio.StreamReader) -> tuple[int, bytes]:
    first = (await r.readexactly(1))[0]
    length = shift = 0
    while True:
        b = (await r.readexactly(1))[0]
        length |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    return first, await r.readexactly(length)


def connack(props: bytes = b"\x00", code: int = 0) -> bytes:
    body = bytes([0, code]) + props
    return bytes([0x20, len(body)]) + body


def puback(mid: int, code: int = 0) -> bytes:
    return b"\x40\x03" + struct.pack(">HB", mid, code)


def publish_mid(body: bytes) -> int:
    n = body[0] << 8 | body[1]
    return int(body[2 + n] << 8 | body[3 + n])


@contextlib.asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[int]:
    errors: list[BaseException] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await script(r, w)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except BaseException as exc:  # reported by the test, not lost in the server
            errors.append(exc)
        finally:
            w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
    assert not errors, errors


def test_receive_maximum_is_obeyed_and_held_publishes_go_in_order() -> None:
    seen: list[int] = []
    most = 0

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal most
        await read_packet(r)  # CONNECT
        w.write(connack(b"\x03\x21\x00\x02"))  # Receive Maximum 2
        open_mids: list[int] = []
        while len(seen) < 10:
            first, body = await read_packet(r)
            assert first >> 4 == wire.PUBLISH
            open_mids.append(publish_mid(body))
            seen.append(int(body[-1]))
            most = max(most, len(open_mids))
            await asyncio.sleep(0.02)  # lets the client send more if it would
            if len(open_mids) == 2 or len(seen) == 10:
                for mid in open_mids:
                    w.write(puback(mid))
                open_mids = []
        await read_packet(r)  # DISCONNECT

    async def go() -> None:
        async with scripted(script) as port:
            async with MqttClient("127.0.0.1", port, client_id="rm") as client:
                assert client.send_quota == 2
                futs = [client.publish_future("t/x", bytes([i])) for i in range(10)]
                assert await asyncio.gather(*futs) == [0] * 10

    _run(go())
    assert seen == list(range(10)) and most == 2


def test_over_the_brokers_maximum_packet_size_is_refused_before_sending() -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_packet(r)
        w.write(connack(b"\x05\x27\x00\x00\x01\x00"))  # Maximum Packet Size 256
        _, body = await read_packet(r)
        assert body.endswith(b"small")
        w.write(puback(publish_mid(body), 0x97))
        await read_packet(r)

    async def go() -> None:
        async with scripted(script) as port:
            async with MqttClient("127.0.0.1", port, client_id="mp") as client:
                with pytest.raises(ValueError, match="maximum packet size"):
                    client.publish_future("t/x", b"b" * 300)
                assert await client.publish_acked("t/x", b"small") == 0x97

    _run(go())


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (b"\x32\xff\xff\xff\xff\x7f", "malformed packet"),  # a five-byte Remaining Length
        (b"\x34\x06\x00\x01t\x00\x01\x00", "QoS 2"),
        (b"\x30\x08\x00\x01t\x03\x23\x00\x01x", "topic alias"),
        (b"\xe0\x02\x8e\x00", "reason 0x8e"),  # DISCONNECT: session taken over
        (b"\x90\x01\x00", "malformed packet"),  # a truncated SUBACK
    ],
)
def test_hostile_packets_end_the_connection_and_fail_every_waiting_publish(
    bad: bytes, why: str
) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_packet(r)
        w.write(connack())
        await read_packet(r)  # the PUBLISH, never acknowledged
        w.write(bad)
        await asyncio.sleep(5)

    async def go() -> None:
        async with scripted(script) as port:
            async with MqttClient("127.0.0.1", port, client_id="h") as client:
                fut = client.publish_future("t/x", b"p")
                with pytest.raises(MqttError, match="disconnected before PUBACK"):
                    await asyncio.wait_for(fut, 10)
                with pytest.raises(MqttError, match=why):
                    async for _ in client.messages:
                        pass
                with pytest.raises(MqttError, match=why):
                    client.publish_future("t/x", b"again")

    _run(go())


def test_a_silent_broker_is_dropped_after_one_and_a_half_keep_alives() -> None:
    pings = 0

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal pings
        await read_packet(r)
        w.write(connack())
        while True:
            first, _ = await read_packet(r)
            pings += first == 0xC0  # PINGREQ, never answered

    async def go() -> None:
        async with scripted(script) as port:
            async with MqttClient("127.0.0.1", port, client_id="k", keepalive=2) as client:
                t0 = time.monotonic()
                with pytest.raises(MqttError, match="keep alive: the broker was silent"):
                    async for _ in client.messages:
                        pass
                assert 3.0 <= time.monotonic() - t0 < 6.0

    _run(go())
    assert pings >= 1


def test_no_connack_is_a_timeout_and_an_unsupported_version_its_code() -> None:
    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_packet(r)
        await asyncio.sleep(5)

    async def v311_only(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_packet(r)
        w.write(b"\x20\x02\x00\x01")  # 3.1.1: unacceptable protocol version

    async def go() -> None:
        async with scripted(silent) as port:
            with pytest.raises(MqttError, match="timed out") as info:
                async with MqttClient("127.0.0.1", port, client_id="t", timeout=1):
                    pass
            assert not isinstance(info.value, MqttConnectError)
        async with scripted(v311_only) as port:
            with pytest.raises(MqttConnectError) as refused:
                async with MqttClient("127.0.0.1", port, client_id="t", timeout=3):
                    pass
            assert refused.value.rc == 1

    _run(go())


def test_the_connect_carries_will_credentials_and_clean_start() -> None:
    got: list[bytes] = []

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        got.append((await read_packet(r))[1])
        w.write(b"\x20\x02\x00\x00")
        await read_packet(r)

    async def go() -> None:
        async with scripted(script) as port:
            will = wire.Will("s/t", b"off", 1, True)
            async with MqttClient(
                "127.0.0.1", port, client_id="id", protocol=MqttVersion.V311, will=will,
                username="u", password="pw", keepalive=30,
            ):  # fmt: skip
                pass

    _run(go())
    assert got == [
        b"\x00\x04MQTT\x04\xee\x00\x1e"  # level 4; user, password, will retain, QoS 1, clean
        b"\x00\x02id\x00\x03s/t\x00\x03off\x00\x01u\x00\x02pw"
    ]


def test_a_broker_over_our_receive_maximum_is_dropped_and_qos0_is_bounded() -> None:
    def publish(topic: bytes, qos: int, mid: int) -> bytes:
        body = struct.pack(">H", len(topic)) + topic + (struct.pack(">H", mid) if qos else b"")
        body += b"\x00p"  # no properties, payload "p"
        return bytes([0x30 | qos << 1, len(body)]) + body

    async def flood0(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_packet(r)
        w.write(connack())
        w.write(b"".join(publish(b"c/x", 0, 0) for _ in range(300)))
        await asyncio.sleep(5)

    async def flood1(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_packet(r)
        w.write(connack())
        w.write(b"".join(publish(b"c/x", 1, mid) for mid in range(1, 34)))  # 33 > 32
        await asyncio.sleep(5)

    async def go() -> None:
        async with scripted(flood0) as port:
            async with MqttClient("127.0.0.1", port, client_id="f0") as client:
                await asyncio.sleep(0.5)
                assert client.dropped == 300 - 256
                got = 0
                async for m in client.messages:
                    assert (m.topic, m.payload, m.qos) == ("c/x", b"p", 0)
                    got += 1
                    if got == 256:
                        break
        async with scripted(flood1) as port:
            async with MqttClient("127.0.0.1", port, client_id="f1") as client:
                await asyncio.sleep(0.5)  # nothing taken, so nothing acknowledged
                assert not client.connected
                with pytest.raises(MqttError, match="more than 32 QoS 1 messages"):
                    async for _ in client.messages:
                        pass

    _run(go())
