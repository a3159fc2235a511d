"""The gateway on an emulated Raspberry Pi: build (cached) and check, one command.

    python hil_tests/qemu/check.py [--standin] [--keep]

Boots the arm64 image from its `booted` snapshot and checks, failing with a non-zero
exit on the first miss: the unit reaches active (running) via Type=notify; SIGKILL ->
restarted by systemd; SIGSTOP -> killed by the watchdog and restarted; systemd-analyze
security <= 2.0; journald holds the service's log lines; a power cut (QEMU quit) and a
cold boot. With the real gateway it also runs the real firmware node on the host
(`citysense-emulator run`, enrolled through its REPL) bridged to the guest's serial port
(a PCI UART), and a Mosquitto (mTLS) on host loopback reached through
the single guest forward; records must arrive byte-identical and verified, nothing
lost, and the queue must survive the power cut and drain.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1]), str(HERE.parents[1] / "tests")]

import build  # noqa: E402
from report import CheckFailed, passed, say  # noqa: E402
from vm import Vm, VmError, boot_wait, ensure_snapshot  # noqa: E402

MAX_EXPOSURE = 2.0
LINK = "/dev/citysense-node"  # guest/rootfs/etc/udev/rules.d/70-citysense-node.rules


def poll(what: str, fn: Callable[[], bool], timeout: float, every: float = 0.5) -> float:
    t0 = time.monotonic()
    while not fn():
        if time.monotonic() - t0 > timeout:
            raise CheckFailed(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)
    return time.monotonic() - t0


def show(vm: Vm, unit: str, *props: str) -> dict[str, str]:
    _, out = vm.sh(f"systemctl show {unit} --property={','.join(props)}")
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {p: values.get(p, "") for p in props}


def running(vm: Vm, unit: str) -> dict[str, str]:
    return show(vm, unit, "ActiveState", "SubState", "MainPID", "NRestarts", "Type")


def is_running(state: dict[str, str]) -> bool:
    return state["ActiveState"] == "active" and state["SubState"] == "running"


def guest_now(vm: Vm) -> float:
    return float(vm.sh("date +%s.%N")[1].strip())


class Scenario:
    def __init__(self, image: Path, work: Path, unit: str, mqtt_port: int) -> None:
        self.image = image
        self.work = work
        self.unit = unit
        self.mqtt_port = mqtt_port
        self.disk = work / "disk.qcow2"
        self.vm: Vm | None = None
        self.boots = 0

    # ------------------------------------------------------------ VM life

    def resume_snapshot(self) -> Vm:
        snap = ensure_snapshot(self.image)
        subprocess.run(["cp", "--reflink=auto", str(snap), str(self.disk)], check=True)
        t0 = time.monotonic()
        vm = self._new_vm()
        vm.start(loadvm="booted")
        vm.sh("true", timeout=60)
        # The snapshot's clock is the day it was taken: TLS needs today's.
        vm.sh(f"date -s @{time.time():.3f} >/dev/null")
        self.wait_link(vm)
        say(f"VM resumed from its snapshot in {time.monotonic() - t0:.1f} s")
        return vm

    def wait_link(self, vm: Vm) -> None:
        """udev has named the node link's UART."""
        rc, _ = vm.sh(
            f"for i in $(seq 120); do test -e {LINK} && break; sleep 0.5; done; test -e {LINK}",
            timeout=90,
            check=False,
        )
        if rc != 0:
            raise CheckFailed(f"{LINK} did not appear in the guest")

    def cold_boot(self) -> Vm:
        vm = self._new_vm()
        vm.start()
        seconds = boot_wait(vm, 600)
        self.wait_link(vm)
        say(f"VM cold-booted to a running system in {seconds:.0f} s")
        return vm

    def _new_vm(self) -> Vm:
        self.boots += 1
        self.vm = Vm(self.image, self.disk, self.work, self.mqtt_port, f"boot{self.boots}")
        return self.vm

    def power_cut(self) -> None:
        assert self.vm is not None
        self.vm.quit()
        self.vm = None

    def close(self) -> None:
        if self.vm is not None:
            self.vm.kill()
            self.vm = None

    # ------------------------------------------------------------ service checks

    def start_unit(self, vm: Vm) -> dict[str, str]:
        t0 = time.monotonic()
        rc, out = vm.sh(f"systemctl start {self.unit}", timeout=180, check=False)
        if rc != 0:
            _, status = vm.sh(f"systemctl status --no-pager -l {self.unit}", check=False)
            _, log = vm.sh(f"journalctl -u {self.unit} --no-pager -n 40", check=False)
            raise CheckFailed(f"systemctl start {self.unit}: {rc} {out}\n{status}\n{log}")
        state = running(vm, self.unit)
        if state["Type"] != "notify" or not is_running(state):
            raise CheckFailed(f"{self.unit} after start: {state}")
        passed(
            f"systemctl start {self.unit}: active (running), Type=notify, "
            f"ready in {time.monotonic() - t0:.1f} s"
        )
        return state

    def wait_restarted(self, vm: Vm, before: dict[str, str], timeout: float) -> dict[str, str]:
        latest: dict[str, str] = {}

        def restarted() -> bool:
            latest.update(running(vm, self.unit))
            return (
                is_running(latest)
                and latest["MainPID"] not in ("0", before["MainPID"])
                and int(latest["NRestarts"]) > int(before["NRestarts"])
            )

        try:
            poll(f"{self.unit} to be restarted", restarted, timeout)
        except CheckFailed as exc:
            raise CheckFailed(f"{exc}; last state {latest}") from None
        return dict(latest)

    def check_sigkill(self, vm: Vm) -> None:
        before = running(vm, self.unit)
        vm.sh(f"systemctl kill -s SIGKILL {self.unit}")
        after = self.wait_restarted(vm, before, 120)
        passed(
            f"SIGKILL: systemd restarted {self.unit} "
            f"(pid {before['MainPID']} -> {after['MainPID']}, NRestarts {after['NRestarts']})"
        )

    def check_watchdog(self, vm: Vm) -> None:
        usec = show(vm, self.unit, "WatchdogUSec")["WatchdogUSec"]
        limit = parse_timespan(usec)
        if not limit:
            raise CheckFailed(f"{self.unit} has no WatchdogSec (WatchdogUSec={usec!r})")
        before = running(vm, self.unit)
        frozen_at = guest_now(vm)
        vm.sh(f"systemctl kill -s SIGSTOP {self.unit}")
        after = self.wait_restarted(vm, before, limit + 120)
        _, log = vm.sh(
            f"journalctl -u {self.unit} -o short-unix --no-pager | grep 'Watchdog timeout'",
            check=False,
        )
        stamps = [float(line.split()[0]) for line in log.splitlines() if line[:1].isdigit()]
        fired = [s for s in stamps if s >= frozen_at - 1]
        if not fired:
            raise CheckFailed(f"no 'Watchdog timeout' in the journal after SIGSTOP:\n{log}")
        delay = fired[0] - frozen_at
        if delay > limit + 1.0:
            raise CheckFailed(f"watchdog fired {delay:.1f} s after SIGSTOP (limit {limit} s)")
        passed(
            f"SIGSTOP: watchdog fired after {delay:.1f} s (WatchdogSec={limit:g}), "
            f"restarted as pid {after['MainPID']}"
        )

    def check_security(self, vm: Vm) -> float:
        _, out = vm.sh(f"systemd-analyze security --no-pager {self.unit}", timeout=120)
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out)
        if not m:
            raise CheckFailed(f"no exposure level in systemd-analyze output:\n{out[-800:]}")
        level = float(m.group(1))
        if level > MAX_EXPOSURE:
            raise CheckFailed(f"systemd-analyze security {self.unit}: {level} > {MAX_EXPOSURE}")
        passed(f"systemd-analyze security {self.unit}: {level} <= {MAX_EXPOSURE}")
        return level

    def check_journal(self, vm: Vm, pattern: str) -> None:
        _, out = vm.sh(
            f"journalctl _SYSTEMD_UNIT={self.unit}.service -o cat --no-pager", timeout=60
        )
        hits = [line for line in out.splitlines() if re.search(pattern, line)]
        if not hits:
            raise CheckFailed(f"journal of {self.unit} has no line matching {pattern!r}")
        passed(f"journald holds the service's log lines, e.g. {hits[-1].strip()[:120]!r}")


def parse_timespan(text: str) -> float:
    """systemd time spans as `systemctl show` prints them: '10s', '1min 30s', '500ms'."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}
    total = 0.0
    for num, unit in re.findall(r"([0-9.]+)\s*(us|ms|min|s|h)", text):
        total += float(num) * units[unit]
    return total


def check_isolation(vm: Vm) -> None:
    """restrict=on: no default route, and nothing but the guest forward answers."""
    _, routes = vm.sh("ip route")
    if "default" in routes:
        raise CheckFailed(f"the guest has a default route:\n{routes}")
    probe = (
        'python3 -c "import socket,sys; '
        'socket.create_connection((sys.argv[1], int(sys.argv[2])), 5)" '
    )
    for host, port in (("10.0.2.2", 22), ("10.0.2.3", 53), ("1.1.1.1", 443)):
        rc, _ = vm.sh(probe + f"{host} {port}", timeout=60, check=False)
        if rc == 0:
            raise CheckFailed(f"the guest reached {host}:{port}; restrict=on should forbid it")
    passed("network: no default route; 10.0.2.2, 10.0.2.3, 1.1.1.1 unreachable from the guest")


def check_forward(vm: Vm, port: int) -> None:
    """The single guest forward reaches a server on host loopback (here an echo)."""
    srv = socket.create_server(("127.0.0.1", port))
    srv.settimeout(60)

    def echo() -> None:
        try:
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(30)
                conn.sendall(conn.recv(64))
        except OSError:
            pass

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    try:
        _, out = vm.sh(
            "python3 -c \"import socket; s=socket.create_connection(('broker', 1883), 20); "
            "s.sendall(b'citysense'); print(s.recv(64).decode())\"",
            timeout=90,
        )
    finally:
        srv.close()
        thread.join(timeout=5)
    if out.strip() != "citysense":
        raise CheckFailed(f"guest forward: echo from 127.0.0.1:{port} was {out!r}")
    passed(f"network: the guest forward broker:1883 reaches 127.0.0.1:{port} on the host")


def check_link(vm: Vm) -> None:
    """Both directions of the node link: host pty <-> the guest's PCI UART."""
    _, dev = vm.sh(f"readlink -f {LINK}")
    dev = dev.strip()
    _, perms = vm.sh(f"stat -c '%G %a' {dev}")
    if perms.split() != ["dialout", "660"]:
        raise CheckFailed(f"{dev} is {perms.strip()!r}, want dialout 660")
    fd = os.open(vm.link_pty, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        tty.setraw(fd)
        # QEMU notices a reader on its pty within a second (it polls).
        time.sleep(2)
        vm.sh(f"stty -F {dev} raw -echo 115200")
        vm.sh(f"(timeout 30 head -c 8 {dev} > /tmp/link.in) & sleep 1")
        os.write(fd, bytes(range(250, 256)) + b"\x00\x01")
        _, got = vm.sh("wait; od -An -tx1 /tmp/link.in", timeout=60)
        if got.split() != ["fa", "fb", "fc", "fd", "fe", "ff", "00", "01"]:
            raise CheckFailed(f"host -> guest over the link: got {got.strip()!r}")
        vm.sh(f"printf 'from-guest' > {dev}")
        data = b""
        deadline = time.monotonic() + 20
        while len(data) < 10 and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                data += os.read(fd, 64)
        if data != b"from-guest":
            raise CheckFailed(f"guest -> host over the link: got {data!r}")
    finally:
        os.close(fd)
    passed(f"node link: {LINK} -> {dev} (dialout 660) <-> host pty, raw bytes both ways")


def run_standin(scn: Scenario) -> None:
    """The VM pipeline with the stand-in service (while the gateway is not built yet)."""
    vm = scn.resume_snapshot()
    check_isolation(vm)
    check_forward(vm, scn.mqtt_port)
    check_link(vm)
    scn.start_unit(vm)
    scn.check_sigkill(vm)
    scn.check_watchdog(vm)
    scn.check_security(vm)
    scn.check_journal(vm, r"standin: started pid=\d+ .* link=ok")
    vm.sh("sync")
    scn.power_cut()
    vm = scn.cold_boot()
    scn.start_unit(vm)
    passed("power cut (QEMU quit) and cold boot: the service starts again")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--standin", action="store_true", help="check the stand-in unit only")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    try:
        image = build.build_image()
        t_build = time.monotonic() - t0
        t1 = time.monotonic()
        ensure_snapshot(image)
        t_snap = time.monotonic() - t1
    except (subprocess.CalledProcessError, VmError, RuntimeError, OSError) as exc:
        print(f"qemu-check: FAIL building the image: {exc}", file=sys.stderr, flush=True)
        return 1
    work = Path(tempfile.mkdtemp(prefix="citysense-qemu-"))
    work.chmod(0o755)  # mosquitto drops root privileges and must read its config
    standin = args.standin or not build.gateway_available()
    unit = "citysense-standin" if standin else "citysense-gateway"
    from support import free_port  # tests/support.py

    scn = Scenario(image, work, unit, free_port())
    ok = False
    t2 = time.monotonic()
    try:
        if standin:
            say("checking the VM pipeline with the stand-in service")
            run_standin(scn)
        else:
            import gateway_run

            gateway_run.run(scn)
        ok = True
    except (CheckFailed, VmError) as exc:
        print(f"qemu-check: FAIL {exc}", file=sys.stderr, flush=True)
    finally:
        scn.close()
        say(
            f"times: build {t_build:.0f} s (cached stages reused when inputs match), "
            f"snapshot {t_snap:.0f} s, checks {time.monotonic() - t2:.0f} s, "
            f"total {time.monotonic() - t0:.0f} s"
        )
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            say(f"logs kept in {work}")
    if standin and not args.standin:
        print("qemu-check: FAIL the gateway is not in this checkout yet", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
