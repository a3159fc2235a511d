#!/usr/bin/python3
"""Stand-in for the gateway while proving the VM pipeline: a Type=notify service that
reports READY=1, feeds the systemd watchdog from its loop and logs a structured line."""

import os
import socket
import sys
import time

LINK = "/dev/citysense-node"


def notify(msg: str) -> None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(msg.encode(), addr)


def main() -> int:
    usec = int(os.environ.get("WATCHDOG_USEC", "0"))
    period = usec / 2e6 if usec else 5.0
    # What the gateway needs from its sandbox: the node link opens read-write.
    fd = os.open(LINK, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    os.close(fd)
    print(f"standin: started pid={os.getpid()} watchdog_usec={usec} link=ok", flush=True)
    notify("READY=1\nSTATUS=stand-in running")
    while True:
        notify("WATCHDOG=1")
        time.sleep(period)


if __name__ == "__main__":
    sys.exit(main())
