"""A local CA for labs and tests, gateway client certificates and a broker server cert.

Keys are ECDSA P-256 (what Mosquitto, OpenSSL and Python's ssl all accept), written 0600.
A gateway certificate's CN is the gateway id: Mosquitto's `use_identity_as_username`
makes it the MQTT user its ACL checks.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import ProvisionError
from .keys import write_new

CA_KEY = "ca.key"
CA_CERT = "ca.crt"
_DAY = dt.timedelta(days=1)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "citysense"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _out_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ProvisionError(f"cannot create {path} ({exc.strerror}), pass another --out") from exc
    return path


def init_ca(directory: Path, name: str = "citysense lab CA", days: int = 3650) -> Path:
    d = _out_dir(directory)
    if (d / CA_KEY).exists() or (d / CA_CERT).exists():
        raise ProvisionError(f"a CA already exists in {d}, refusing to overwrite it")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY)
        .not_valid_after(now + days * _DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    write_new(d / CA_KEY, _key_pem(key), 0o600)
    write_new(d / CA_CERT, _cert_pem(cert), 0o644)
    return d / CA_CERT


def load_ca(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    try:
        key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), None)
        cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
    except (OSError, ValueError) as exc:
        raise ProvisionError(
            f"no usable CA in {directory} ({exc}), create one with citysense-provision ca init"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ProvisionError(f"{directory / CA_KEY} is not an EC key, recreate the CA")
    return key, cert


def sign_csr(
    ca_dir: Path,
    csr: x509.CertificateSigningRequest,
    *,
    server: bool,
    sans: list[x509.GeneralName] | None = None,
    days: int = 825,
) -> x509.Certificate:
    if not csr.is_signature_valid:
        raise ProvisionError("the CSR's signature is invalid, create a new CSR")
    ca_key, ca_cert = load_ca(ca_dir)
    now = dt.datetime.now(dt.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca_cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY)
        .not_valid_after(now + days * _DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _key_and_csr(
    out: Path, stem: str, cn: str, sans: list[x509.GeneralName]
) -> x509.CertificateSigningRequest:
    if (out / f"{stem}.key").exists():
        raise ProvisionError(f"{out / (stem + '.key')} already exists, refusing to overwrite it")
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(_name(cn))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    write_new(out / f"{stem}.key", _key_pem(key), 0o600)
    write_new(out / f"{stem}.csr", csr.public_bytes(serialization.Encoding.PEM), 0o644)
    return csr


def _issue(ca_dir: Path, out: Path, stem: str, cert: x509.Certificate) -> None:
    write_new(out / f"{stem}.crt", _cert_pem(cert), 0o644)
    ca_copy = out / CA_CERT
    if ca_copy.resolve() != (ca_dir / CA_CERT).resolve() and not ca_copy.exists():
        write_new(ca_copy, (ca_dir / CA_CERT).read_bytes(), 0o644)


def gateway_cert(gateway_id: str, out: Path, ca_dir: Path | None) -> list[Path]:
    """gateway.key + gateway.csr; with a CA also gateway.crt (client auth) and ca.crt."""
    d = _out_dir(out)
    if ca_dir is not None:
        load_ca(ca_dir)  # fail before writing anything
    csr = _key_and_csr(d, "gateway", gateway_id, [])
    files = [d / "gateway.key", d / "gateway.csr"]
    if ca_dir is not None:
        _issue(ca_dir, d, "gateway", sign_csr(ca_dir, csr, server=False))
        files += [d / "gateway.crt", d / CA_CERT]
    return files


def broker_cert(ca_dir: Path, out: Path, dns: list[str], ips: list[str]) -> list[Path]:
    """broker.key + broker.crt (server auth, SANs) + ca.crt, signed by the CA."""
    load_ca(ca_dir)
    try:
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    except ValueError as exc:
        raise ProvisionError(f"invalid --ip ({exc}), pass an address like 127.0.0.1") from exc
    if not sans:
        raise ProvisionError("a broker certificate needs at least one --dns or --ip")
    d = _out_dir(out)
    cn = dns[0] if dns else ips[0]
    csr = _key_and_csr(d, "broker", cn, sans)
    _issue(ca_dir, d, "broker", sign_csr(ca_dir, csr, server=True, sans=sans))
    return [d / "broker.key", d / "broker.crt", d / CA_CERT]


def sign_csr_file(ca_dir: Path, csr_path: Path, out: Path) -> Path:
    """Issue a client certificate for a CSR made elsewhere (e.g. on the Pi itself)."""
    try:
        csr = x509.load_pem_x509_csr(csr_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ProvisionError(f"cannot read the CSR {csr_path} ({exc}), pass a PEM CSR") from exc
    write_new(out, _cert_pem(sign_csr(ca_dir, csr, server=False)), 0o644)
    return out
