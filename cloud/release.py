"""`citysense-cloud release build | publish | list`: firmware bundles for the nodes.

    citysense-cloud --config cloud.toml release build --version 1.4.0 --seq 7 \\
        --key release.key --out citysense-1.4.0.csb [--firmware-dir firmware/] \\
        [--arch xtensawin] [--hardware esp32] [--json]
    citysense-cloud --config cloud.toml release publish citysense-1.4.0.csb \\
        (--gateway gw-01 | --all) [--wait 30] [--json]
    citysense-cloud --config cloud.toml release list [--json]

build: compiles every module of the app (`<firmware-dir>/lib`, tests and tool folders
left out) with `mpy-cross -O3 -march=ARCH` (the emulator's own arch is `host`, recorded as
the arch mpy-cross emitted native code for), and writes the bundle
(citysense_formats.bundle: manifest signed by the release key, then the files). The app's
own `VERSION` (citysense/app.py, what the node reports in HELLO and `sys/fw`) must equal
--version, and its `PROTOCOL` goes into the manifest. Every release built is recorded in
`releases.json` under [state] dir (under a lock, temp file + fsync + rename); a seq not
above the last one recorded, or a version already built, is refused, as is an existing
--out file: a released bundle is never rewritten. The release key is the one
`citysense-provision release-key` writes (0600), never the operator key.

publish: checks the file's shape, then publishes it QoS 1, retained, on
`citysense/v1/<gw>/ota` or `citysense/v1/ota` (citysense_formats.ota_topics). With
--gateway it first subscribes to that gateway's `ota-report` and waits up to --wait
seconds for its report on this bundle (the gateway verifies the signature and every hash
and caches it, or refuses it with a reason).

Exit codes: 0 done; 2 bad input or config (a seq not above the last, a version built
before, a bundle that does not parse); 3 the gateway refused the bundle; 4 no report
within --wait; 5 broker unreachable; 6 state dir; 7 the broker refused the publish (ACL);
8 the build failed (mpy-cross missing or failing, --out not writable or existing).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from citysense_formats import bundle as fmt
from citysense_formats import devid, ota_topics
from citysense_formats.durable import replace_file

from . import release_build
from .command_mqtt import CommandLink
from .config import CloudConfig
from .errors import CloudError, CommandTimeoutError, UsageError
from .statelock import locked

RELEASES_FILE = "releases.json"
_LOCK = "releases.lock"


class ReleaseStateError(CloudError):
    exit_code = 6


class BundleRefusedError(CloudError):
    """The gateway's report: it refused the bundle."""

    exit_code = 3


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("release", help="build and publish signed firmware bundles")
    rsub = p.add_subparsers(dest="release_cmd", required=True, metavar="ACTION")
    b = rsub.add_parser("build", help="compile the app and write a signed bundle")
    b.add_argument("--version", required=True, help="the app's VERSION, e.g. 1.4.0")
    b.add_argument("--seq", type=int, required=True, help="release seq, above every earlier")
    b.add_argument("--firmware-dir", help="firmware tree (default: the bundled firmware/)")
    b.add_argument("--arch", default="xtensawin", help="mpy-cross -march (host: this machine)")
    b.add_argument("--hardware", default="esp32", help="the node hardware it is for")
    b.add_argument("--key", required=True, help="release signing key (citysense-provision)")
    b.add_argument("--out", required=True, help="the bundle file to write (*.csb)")
    b.add_argument("--json", action="store_true", help="print the release as JSON")
    b.set_defaults(func=build)
    u = rsub.add_parser("publish", help="publish a bundle to one gateway or all")
    u.add_argument("file", help="the bundle file (*.csb)")
    where = u.add_mutually_exclusive_group(required=True)
    where.add_argument("--gateway", help="this gateway only")
    where.add_argument("--all", action="store_true", help="every gateway")
    u.add_argument("--wait", type=int, default=30, help="seconds to wait for the report")
    u.add_argument("--json", action="store_true", help="print the outcome as JSON")
    u.set_defaults(func=publish)
    s = rsub.add_parser("list", help="the releases built from this state dir")
    s.add_argument("--json", action="store_true", help="JSON lines")
    s.set_defaults(func=show)


# -- the releases built here ----------------------------------------------------------


def load_releases(state_dir: Path) -> list[dict[str, Any]]:
    path = state_dir / RELEASES_FILE
    try:
        obj = json.loads(path.read_bytes())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise ReleaseStateError(
            f"cannot read {path} ({exc}): restore it from a backup; it holds the release"
            " seqs already used"
        ) from exc
    items = obj.get("releases") if isinstance(obj, dict) else None
    if not isinstance(items, list) or not all(isinstance(r, dict) for r in items):
        raise ReleaseStateError(f"{path} is not a releases file: restore it from a backup")
    return items


def find_release(state_dir: Path, version: str) -> dict[str, Any]:
    for r in load_releases(state_dir):
        if r.get("version") == version:
            return r
    raise UsageError(
        f"no release {version!r} was built from the state dir {state_dir}: see"
        " `citysense-cloud release list`"
    )


def _save_releases(state_dir: Path, items: list[dict[str, Any]]) -> None:
    path = state_dir / RELEASES_FILE
    body = json.dumps({"releases": items}, indent=1, sort_keys=True).encode()
    try:
        replace_file(path, body, 0o600)
    except OSError as exc:
        raise ReleaseStateError(f"cannot write {path} ({exc.strerror}): check [state] dir") from exc


def _check_new(items: list[dict[str, Any]], version: str, seq: int) -> None:
    last = max((r.get("seq", 0) for r in items), default=0)
    if seq <= last:
        raise UsageError(
            f"--seq {seq} is not above {last}, the last release built from this state dir:"
            f" use --seq {last + 1} or more (nodes install only a higher seq)"
        )
    for r in items:
        if r.get("version") == version:
            raise UsageError(
                f"version {version} was already built (seq {r.get('seq')}, {r.get('file')}):"
                " bump VERSION in citysense/app.py and give the new one"
            )


# -- build ------------------------------------------------------------------------------


def build(args: argparse.Namespace, cfg: CloudConfig) -> int:
    spec = release_build.Spec(
        version=args.version,
        seq=args.seq,
        arch=args.arch,
        hardware=args.hardware,
        firmware_dir=Path(args.firmware_dir) if args.firmware_dir else None,
    )
    release_build.check_spec(spec)
    out = Path(args.out)
    release_build.check_out(out)
    key = release_build.load_release_key(Path(args.key), cfg.operator_key)
    with locked(cfg.state_dir, _LOCK, ReleaseStateError):
        items = load_releases(cfg.state_dir)
        _check_new(items, spec.version, spec.seq)
        data, info = release_build.make_bundle(spec, key, int(time.time() * 1000))
        release_build.write_out(out, data)
        info["file"] = str(out.resolve())
        _save_releases(cfg.state_dir, [*items, info])
    if args.json:
        print(json.dumps(info, sort_keys=True))
    else:
        print(
            f"built {out}: version {info['version']} seq {info['seq']}, {info['files']} files,"
            f" {info['size']} bytes, {info['hardware']}/{info['arch']} protocol"
            f" {info['protocol']}; bundle {info['bundle']}"
        )
    return 0


# -- publish ----------------------------------------------------------------------------


def _read_bundle(path: Path) -> tuple[bytes, fmt.Bundle]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path} ({exc.strerror}): check the file name") from exc
    try:
        return data, fmt.parse(data)
    except fmt.BundleError as exc:
        raise UsageError(
            f"{path} is not a bundle ({exc.reason}: {exc}): give a file from release build"
        ) from exc


def publish(args: argparse.Namespace, cfg: CloudConfig) -> int:
    gateway = args.gateway
    if gateway is not None and not devid.is_valid(gateway):
        raise UsageError(f"bad --gateway {gateway!r}: {devid.RULE}")
    if not 0 <= args.wait <= 3600:
        raise UsageError(f"bad --wait {args.wait}: seconds, 0..3600")
    data, b = _read_bundle(Path(args.file))
    broker = cfg.need_broker()
    topic = ota_topics.bundle_topic(gateway)
    listen = ota_topics.report_topic(gateway) if gateway and args.wait else None
    hint = "citysense/v1/ota and citysense/v1/+/ota"
    report = None
    with CommandLink(broker, listen, write_hint=hint) as link:
        link.publish(topic, data, retain=True)
        if listen is not None:
            report = _await_report(link, b.id, time.monotonic() + args.wait)
    return _publish_outcome(args, b, topic, report)


def _await_report(link: CommandLink, bundle_id: str, deadline: float) -> ota_topics.Report | None:
    while (body := link.next_result(deadline)) is not None:
        try:
            report = ota_topics.decode_report(body)
        except ValueError:
            continue
        if report.bundle == bundle_id:
            return report
    return None


def _publish_outcome(
    args: argparse.Namespace, b: fmt.Bundle, topic: str, report: ota_topics.Report | None
) -> int:
    what = f"bundle {b.short_id} (version {b.version} seq {b.seq}, {b.size} bytes)"
    out = {"bundle": b.id, "version": b.version, "seq": b.seq, "topic": topic,
           "report": None if report is None else report.status,
           "reason": None if report is None else report.reason}  # fmt: skip
    if args.json:
        print(json.dumps(out, sort_keys=True))
    if report is None and args.gateway and args.wait:
        raise CommandTimeoutError(
            f"published {what} on {topic}, but gateway {args.gateway} sent no report within"
            f" {args.wait} s: is it online with [ota] release_key set? (citysense-gateway"
            " check-config)"
        )
    if report is not None and report.status == "refused":
        raise BundleRefusedError(
            f"gateway {args.gateway} refused {what}: {report.reason}: {_safe(report.detail)}"
        )
    if not args.json:
        got = f"; gateway {args.gateway} verified and cached it" if report else ""
        print(f"published {what} on {topic} (retained){got}")
    return 0


def _safe(text: str, limit: int = 200) -> str:
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[:limit])


# -- list -------------------------------------------------------------------------------


def show(args: argparse.Namespace, cfg: CloudConfig) -> int:
    for r in load_releases(cfg.state_dir):
        if args.json:
            print(json.dumps(r, sort_keys=True))
        else:
            print(
                f"{r.get('version')} seq {r.get('seq')} bundle {str(r.get('bundle'))[:16]}"
                f" {r.get('hardware')}/{r.get('arch')} {r.get('size')} bytes {r.get('file')}"
            )
    return 0
