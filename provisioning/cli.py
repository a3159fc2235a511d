"""citysense-provision: command table, argument parsing, one-line errors.

Every failure ends as one line on stderr, `citysense-provision: what went wrong, what to
do`, and a non-zero exit; progress goes to stderr so `--json` output on stdout stays clean.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import audit, ca, deploy, enroll, flash, keys, registry
from .device import Device
from .errors import ProvisionError
from .transport import Repl

PROG = "citysense-provision"
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_VERIFY_FAILED = 3
EXIT_INTERNAL = 70


class UsageError(ProvisionError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}, see {self.prog} --help")


def _progress(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)


def _emit(args: argparse.Namespace, data: Any, human: Callable[[], None]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        human()


def _audit(args: argparse.Namespace) -> audit.Audit:
    return audit.Audit(Path(args.audit) if args.audit else audit.default_path())


def _session(args: argparse.Namespace) -> Repl:
    return Repl(args.port, baud=args.port_baud, timeout=args.timeout)


# -- commands --------------------------------------------------------------------------
def cmd_operator_key(args: argparse.Namespace) -> int:
    log = _audit(args)
    log.check()
    pub = keys.init_operator_key(Path(args.out))
    log.record("operator-key-init", public_key=pub, file=str(args.out))
    print(f"operator key written to {args.out} (0600); public key in {args.out}.pub")
    print(f"fingerprint {registry.fingerprint(pub)}")
    return 0


def cmd_release_key(args: argparse.Namespace) -> int:
    log = _audit(args)
    log.check()
    pub = keys.init_release_key(Path(args.out))
    log.record("release-key-init", public_key=pub, file=str(args.out))
    print(f"release key written to {args.out} (0600); public key in {args.out}.pub")
    print(f"fingerprint {registry.fingerprint(pub)}")
    print("keep it offline, apart from the operator key: it signs firmware for every node")
    return 0


def cmd_flash(args: argparse.Namespace) -> int:
    log = _audit(args)
    log.check()
    digest = flash.flash(args.port, Path(args.firmware), args.baud, _progress)
    log.record("flash", firmware_sha256=digest, port=args.port, image=str(args.firmware))
    print(f"flashed {args.firmware} (sha256 {digest}) to {args.port}")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    log = _audit(args)
    log.check()
    fw_dir = Path(args.firmware_dir) if args.firmware_dir else deploy.default_firmware_dir()
    deploy.sources(fw_dir)  # fail on a missing firmware dir before touching the port
    with _session(args) as repl:
        device = Device(repl)
        emulator = device.is_emulator
        compile_mpy = not (args.source or emulator)
        _progress(
            f"target: {'emulator' if device.is_emulator else 'ESP32'}; "
            f"{'compiling with mpy-cross' if compile_mpy else 'copying sources'}"
        )
        files = deploy.build(fw_dir, compile_mpy)
        report = deploy.deploy(device, files, _progress)
        config = enroll.read_device_config(device)
    log.record(
        "deploy",
        device_id=config.get("device_id") if config else None,
        firmware_sha256=report.firmware_sha256,
        port=args.port,
        copied=len(report.copied),
        removed=len(report.removed),
    )

    def human() -> None:
        for p in report.copied:
            print(f"copied    {p}{' (differed on the device)' if p in report.differed else ''}")
        for p in report.removed:
            print(f"removed   {p}")
        print(
            f"{len(report.copied)} copied, {len(report.removed)} removed,"
            f" {len(report.unchanged)} unchanged; firmware {report.firmware_sha256}"
        )
        if report.copied and not emulator:
            print("press EN (reset) on the node to run the new firmware")

    _emit(args, report.as_dict(), human)
    return 0


def cmd_enroll(args: argparse.Namespace) -> int:
    log = _audit(args)
    log.check()
    op = keys.read_operator_pub(Path(args.operator_pub)) if args.operator_pub else None
    rel = keys.read_release_pub(Path(args.release_pub)) if args.release_pub else None
    opts = enroll.EnrollOptions(
        registry=Path(args.registry),
        device_id=args.device_id,
        operator_pub=op,
        release_pub=rel,
        interval_s=args.interval,
        batch=args.batch,
        link={"uart": args.link_uart, "tx": args.tx, "rx": args.rx, "baud": args.baud},
        sensors=[s for s in args.sensors.split(",") if s] if args.sensors else None,
        replace=args.replace,
        new_key=args.new_key,
        drop_pending=args.drop_pending,
    )
    with _session(args) as repl:
        summary = enroll.enroll(Device(repl), opts, _progress)
    log.record(
        "enroll-replace" if summary["replaced_key_fingerprint"] else "enroll",
        device_id=summary["device_id"],
        public_key=summary["public_key"],
        firmware_sha256=summary["firmware_sha256"],
        key=summary["key"],
        replaced_key_fingerprint=summary["replaced_key_fingerprint"],
        release_key_fingerprint=summary["release_key_fingerprint"],
        registry=str(args.registry),
        seq_floor=summary["seq_floor"],
        seq_state_before=summary["seq_state_before"],
        seq_state=summary["seq_state"],
        pending_dropped=summary["pending_dropped"],
    )

    def human() -> None:
        print(f"enrolled {summary['device_id']} ({summary['target']})")
        print(f"  key          {summary['key']}, fingerprint {summary['key_fingerprint']}")
        if summary["replaced_key_fingerprint"]:
            print(f"  revoked key  fingerprint {summary['replaced_key_fingerprint']}")
        print(f"  registry     {summary['registry_file']}")
        cfg = summary["config"]
        print(
            f"  config       every {cfg['interval_s']} s, batch {cfg['batch']}, link UART"
            f" {cfg['link']['uart']} tx {cfg['link']['tx']} rx {cfg['link']['rx']}"
            f" @ {cfg['link']['baud']}, sensors {','.join(cfg['sensors'])}"
        )
        op_fp = summary["operator_key_fingerprint"]
        print(f"  operator key {op_fp or 'MISSING: the node will refuse every COMMAND'}")
        rel_fp = summary["release_key_fingerprint"]
        print(f"  release key  {rel_fp or 'none: the node will refuse every update'}")
        print(f"  firmware     {summary['firmware_sha256']}")
        before = summary["seq_state_before"]
        print(
            f"  seq          continues at {summary['seq_state']} (floor {summary['seq_floor']}"
            f" = enrollment time in ms; state before: {'none' if before is None else before})"
        )
        if summary["pending_dropped"]:
            print(
                f"  buffer       {summary['pending_dropped']} records signed with the old key"
                " dropped (counted in sys/dropped)"
            )
        if summary["previous_device_id"]:
            print(
                f"note: this node was enrolled as {summary['previous_device_id']} before;"
                f" revoke that id if it is no longer used"
            )
        if summary["target"] == "esp32":
            print("press EN (reset) on the node to start it with this configuration")

    _emit(args, summary, human)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    log = _audit(args)
    log.check()
    op = keys.read_operator_pub(Path(args.operator_pub)) if args.operator_pub else None
    rel = keys.read_release_pub(Path(args.release_pub)) if args.release_pub else None
    with _session(args) as repl:
        result = enroll.verify(Device(repl), Path(args.registry), op, rel)
    log.record(
        "verify",
        device_id=result["device_id"],
        public_key=result["public_key"],
        firmware_sha256=result["firmware_sha256"],
        ok=result["ok"],
        problems=result["problems"],
    )

    def human() -> None:
        print(f"device     {result['device_id']}")
        print(f"key        {result['key_fingerprint']}")
        print(f"registry   {result['registry_status']}")
        same = "matches enrollment" if result["firmware_matches_enrollment"] else "changed"
        print(f"firmware   {result['firmware_sha256']} ({same})")
        for p in result["problems"]:
            print(f"PROBLEM    {p}")
        print("OK" if result["ok"] else "FAILED")

    _emit(args, result, human)
    if not result["ok"]:
        print(f"{PROG}: verify failed: {result['problems'][0]}", file=sys.stderr)
        return EXIT_VERIFY_FAILED
    return 0


def cmd_registry(args: argparse.Namespace) -> int:
    reg = Path(args.registry)
    if args.action == "list":
        items = registry.entries(reg)

        def human_list() -> None:
            for e in items:
                fp = registry.fingerprint(e["public_key"])[:16]
                print(f"{e['device_id']:<24} {e['status']:<8} {fp} {e.get('enrolled_at')}")
            print(f"{len(items)} device(s)")

        _emit(args, items, human_list)
        return 0
    if not args.device_id:
        raise UsageError(f"registry {args.action} needs a device id, see {PROG} registry --help")
    if args.action == "show":
        entry = registry.get(reg, args.device_id)
        shown = dict(entry, key_fingerprint=registry.fingerprint(entry["public_key"]))
        _emit(args, shown, lambda: print(json.dumps(shown, indent=2, sort_keys=True)))
        return 0
    log = _audit(args)
    log.check()
    entry, changed = registry.revoke(reg, args.device_id)
    if changed:
        log.record("revoke", device_id=args.device_id, public_key=entry["public_key"])
    msg = "revoked" if changed else "was already revoked"
    _emit(args, entry, lambda: print(f"{args.device_id} {msg} at {entry['revoked_at']}"))
    return 0


def cmd_ca(args: argparse.Namespace) -> int:
    log = _audit(args)
    log.check()
    if args.action == "init":
        path = ca.init_ca(Path(args.dir))
        log.record("ca-init", dir=str(args.dir))
        print(f"CA created: {path} (key {Path(args.dir) / ca.CA_KEY}, 0600)")
        return 0
    if args.action == "broker-cert":
        files = ca.broker_cert(Path(args.ca), Path(args.out), args.dns, args.ip)
        log.record("broker-cert", dns=args.dns, ip=args.ip, out=str(args.out))
    else:
        files = [ca.sign_csr_file(Path(args.ca), Path(args.csr), Path(args.out))]
        log.record("sign-csr", csr=str(args.csr), out=str(args.out))
    for f in files:
        print(f"wrote {f}")
    return 0


def cmd_gateway_cert(args: argparse.Namespace) -> int:
    log = _audit(args)
    log.check()
    registry.check_device_id(args.gateway_id, "gateway id")
    files = ca.gateway_cert(args.gateway_id, Path(args.out), Path(args.ca) if args.ca else None)
    log.record("gateway-cert", gateway_id=args.gateway_id, out=str(args.out), signed=bool(args.ca))
    for f in files:
        print(f"wrote {f}")
    return 0


# -- parser ----------------------------------------------------------------------------
def _common(json_out: bool = False, port: bool = False) -> _Parser:
    p = _Parser(add_help=False)
    p.add_argument("--audit", help="audit log (default $CITYSENSE_AUDIT or ~/.local/state/...)")
    if json_out:
        p.add_argument("--json", action="store_true", help="machine-readable output")
    if port:
        p.add_argument("--port", required=True, help="the node's serial port")
        p.add_argument("--timeout", type=float, default=10.0, help="seconds per device step")
        p.add_argument("--port-baud", type=int, default=115200, help=argparse.SUPPRESS)
    return p


def _registry_arg(p: argparse.ArgumentParser) -> None:
    env = os.environ.get("CITYSENSE_REGISTRY")
    p.add_argument("--registry", default=env, required=env is None, help="registry directory")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Flash, deploy, enroll and manage citysense nodes.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("operator-key", parents=[_common()], help="create the operator key")
    p.add_argument("action", choices=["init"])
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_operator_key)

    p = sub.add_parser("release-key", parents=[_common()], help="create the release key")
    p.add_argument("action", nargs="?", choices=["init"], default="init")
    p.add_argument("--out", required=True, help="private key file (0600); public in OUT.pub")
    p.set_defaults(func=cmd_release_key)

    p = sub.add_parser("flash", parents=[_common(port=True)], help="flash MicroPython")
    p.add_argument("--firmware", required=True, help="MicroPython ESP32_GENERIC .bin")
    p.add_argument("--baud", type=int, default=460800)
    p.set_defaults(func=cmd_flash)

    p = sub.add_parser("deploy", parents=[_common(True, True)], help="copy the node firmware")
    p.add_argument("--source", action="store_true", help="copy .py sources, no mpy-cross")
    p.add_argument("--firmware-dir", help="firmware tree (default: the bundled firmware/)")
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("enroll", parents=[_common(True, True)], help="key + config + registry")
    _registry_arg(p)
    p.add_argument("--device-id")
    p.add_argument("--operator-pub", help="operator public key (.pub hex or PEM)")
    p.add_argument("--release-pub", help="release public key (.pub hex or PEM), for updates")
    p.add_argument("--interval", type=int, help="sampling interval, seconds")
    p.add_argument("--batch", type=int, help="samples per signed record")
    p.add_argument("--link-uart", type=int)
    p.add_argument("--tx", type=int)
    p.add_argument("--rx", type=int)
    p.add_argument("--baud", type=int)
    p.add_argument("--sensors", help="comma-separated sensor list")
    p.add_argument("--replace", action="store_true", help="revoke and replace a registered key")
    p.add_argument("--new-key", action="store_true", help="generate a new key even if valid")
    p.add_argument(
        "--drop-pending",
        action="store_true",
        help="with a new key: drop the records still in the node's buffer (sys/dropped)",
    )
    p.set_defaults(func=cmd_enroll)

    p = sub.add_parser("verify", parents=[_common(True, True)], help="check device vs registry")
    _registry_arg(p)
    p.add_argument("--operator-pub")
    p.add_argument("--release-pub")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("registry", parents=[_common(True)], help="list/show/revoke devices")
    p.add_argument("action", choices=["list", "show", "revoke"])
    p.add_argument("device_id", nargs="?")
    _registry_arg(p)
    p.set_defaults(func=cmd_registry)

    p = sub.add_parser("ca", parents=[_common()], help="a local CA for labs and tests")
    p.add_argument("action", choices=["init", "broker-cert", "sign"])
    p.add_argument("--dir", help="CA directory (ca init)")
    p.add_argument("--ca", help="CA directory (broker-cert, sign)")
    p.add_argument("--out", help="output directory (broker-cert) or certificate file (sign)")
    p.add_argument("--dns", action="append", default=[])
    p.add_argument("--ip", action="append", default=[])
    p.add_argument("--csr")
    p.set_defaults(func=cmd_ca)

    p = sub.add_parser("gateway-cert", parents=[_common()], help="gateway key, CSR, cert")
    p.add_argument("--gateway-id", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--ca", help="CA directory: also issue the client certificate")
    p.set_defaults(func=cmd_gateway_cert)
    return parser


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


_CA_NEEDS = {"init": ("dir",), "broker-cert": ("ca", "out"), "sign": ("ca", "csr", "out")}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "ca":
            missing = [f"--{n}" for n in _CA_NEEDS[args.action] if not getattr(args, n)]
            if missing:
                raise UsageError(f"ca {args.action} needs {' '.join(missing)}")
        code: int = args.func(args)
        return code
    except UsageError as exc:
        print(f"{PROG}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except ProvisionError as exc:
        print(f"{PROG}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted, re-run the command to finish", file=sys.stderr)
        return 130
    except SystemExit as exc:  # --help
        return int(exc.code or 0) if isinstance(exc.code, int | None) else EXIT_USAGE
    except Exception as exc:
        if os.environ.get("CITYSENSE_DEBUG"):
            raise
        print(
            f"{PROG}: internal error ({type(exc).__name__}: {_one_line(exc)}), please report it"
            " (CITYSENSE_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
