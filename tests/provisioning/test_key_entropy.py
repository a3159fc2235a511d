"""The device key's seed mixes the device's random bytes with the host's, on the device.

seed = SHA-512(device os.urandom(32) || host random (32))[:32]. The real snippet runs in
the real firmware (deployed to the emulator, MicroPython unix port) through the real
transport; the device's `os.urandom` is replaced in the REPL's globals by one that
returns chosen bytes, so the test knows both parts and can compute the expected key with
independent code (hashlib, cryptography). Same device random with two host randoms, and
two device randoms with one host random: four different keys, each the expected one.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from prov_support import NodeRepl, run_cli

from provisioning.device import Device
from provisioning.transport import Repl

# the REPL's `os` (bound by the provisioning prelude) becomes one whose urandom returns
# the bytes last set with _cs_fake_random(); everything else is the real os
CONTROLLED_URANDOM = """
class _CsOs:
    def __init__(self, real):
        self._real = real
        self.data = None
        self.calls = 0
    def urandom(self, n):
        self.calls += 1
        return self.data[:n]
    def __getattr__(self, name):
        return getattr(self._real, name)
os = _CsOs(os)
"""

DEVICE_A = bytes(range(32))
DEVICE_B = bytes(range(32, 64))
HOST_1 = bytes(range(100, 132))
HOST_2 = bytes(range(200, 232))


def public_hex(seed: bytes) -> str:
    pub = Ed25519PrivateKey.from_private_bytes(seed).public_key()
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def expected(device_random: bytes, host_random: bytes) -> tuple[bytes, str]:
    seed = hashlib.sha512(device_random + host_random).digest()[:32]
    return seed, public_hex(seed)


def test_both_device_and_host_random_enter_the_seed(node: NodeRepl) -> None:
    assert run_cli("deploy", "--port", str(node.port)).code == 0
    with Repl(str(node.port)) as repl:
        device = Device(repl)
        device.run(CONTROLLED_URANDOM, "controlling os.urandom")
        keys: dict[tuple[bytes, bytes], str] = {}
        for i, (dev, host) in enumerate(
            [(DEVICE_A, HOST_1), (DEVICE_A, HOST_2), (DEVICE_B, HOST_1), (DEVICE_B, HOST_2)]
        ):
            device.run(f"os.data = {dev!r}", "setting the device random")
            path = f"/config/k{i}"
            keys[dev, host] = device.generate_key(path, host_random=host)
            seed, pub = expected(dev, host)
            assert keys[dev, host] == pub
            assert (node.flash / "config" / f"k{i}").read_bytes() == seed
        calls = device.run("print(os.calls)", "counting os.urandom calls").strip()
    assert len(set(keys.values())) == 4
    assert calls == "4"  # one device random per key, taken from os.urandom


def test_host_random_is_fresh_per_enrollment(node: NodeRepl) -> None:
    """Without a given host random each key gets new host bytes: a device RNG stuck on
    one output still yields two different keys."""
    assert run_cli("deploy", "--port", str(node.port)).code == 0
    with Repl(str(node.port)) as repl:
        device = Device(repl)
        device.run(CONTROLLED_URANDOM + f"os.data = {DEVICE_A!r}", "controlling os.urandom")
        first = device.generate_key("/config/k0")
        second = device.generate_key("/config/k1")
    assert first != second
    assert public_hex(DEVICE_A) not in (first, second)  # not the device random alone
    seeds = [(node.flash / "config" / f"k{i}").read_bytes() for i in (0, 1)]
    assert all(len(s) == 32 for s in seeds) and seeds[0] != seeds[1]
