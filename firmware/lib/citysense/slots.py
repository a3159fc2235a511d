"""App slots on flash and the boot pointer: which app runs, which is on trial.

Flash layout (paths from the filesystem root; docs/firmware.md, "Firmware updates"):
    lib/                    the factory app (USB-deployed; never touched by an update)
    apps/s<seq>/            an app from a bundle (a lib root: citysense/*.mpy ...)
    apps/s<seq>/.ota        "<version> <seq>": written last, after every file verified
    ota/boot                the pointer: "<current> <previous> <trial> <tries>"
    ota/notes               sys/ota texts waiting for a record, one a line
    ota/why                 why a trial failed (main.py writes it), read by boot.py
    ota/failed              the seq of the last release rolled back (never retried)
A slot name is "s<seq>" or "-" (none; as current: the factory app in lib/).

The pointer is replaced whole (temp file + rename): a power cut leaves the old or the
new pointer. boot.py (a fixed file, outside every app) reads it and picks the app:
- trial set, tries 0: the switch. tries := 1, boot the trial app.
- trial set, tries 1, or ota/why present: the trial app booted once and was not
  confirmed (it crashed, the watchdog or power reset it, main.py gave up on it):
  roll back: trial := "-", note "rolled-back <version>: <why>", ota/failed := its seq.
- otherwise: boot `current`.
The app confirms a trial itself (app.Node._confirm, on the gateway's ACK of the first
record of the trial boot): the trial app becomes current, the old current previous.
`prune` (at the start of a staging) deletes every other slot: at most current +
previous + the one being staged are on flash.
boot.py keeps its own copy of the pointer format (it cannot import an app);
tests/node/test_ota.py holds the two together.
"""

import os

PTR = "ota/boot"
NOTES = "ota/notes"
FAILED = "ota/failed"
NONE = "-"


def _text(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def mkdirs(path):
    at = ""
    for part in path.split("/"):
        at = part if not at else at + "/" + part
        try:
            os.mkdir(at)
        except OSError:
            pass  # EEXIST


def replace(path, text):
    """Write `text` to `path` atomically (temp file + rename)."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)


def rmtree(path):
    try:
        entries = list(os.ilistdir(path))
    except OSError:
        return
    for e in entries:
        p = path + "/" + e[0]
        if e[1] == 0x4000:
            rmtree(p)
        else:
            os.remove(p)
    os.rmdir(path)


def read():
    """[current, previous, trial, tries]; the factory default if there is no pointer."""
    t = _text(PTR)
    try:
        cur, prev, trial, tries = t.split()
        return [cur, prev, trial, int(tries)]
    except (AttributeError, ValueError):
        return [NONE, NONE, NONE, 0]


def write(p):
    mkdirs("ota")
    replace(PTR, "%s %s %s %d\n" % (p[0], p[1], p[2], p[3]))


def seq_of(slot):
    return int(slot[1:]) if slot != NONE else 0


def meta(slot):
    """(version, seq) of a complete slot, or None."""
    t = _text("apps/" + slot + "/.ota") if slot != NONE else ""
    try:
        v, s = t.split()
        return v, int(s)
    except (AttributeError, ValueError):
        return None


def installed_seq():
    """Releases at or below this are refused: the running one, or one rolled back."""
    p = read()
    failed = _text(FAILED)
    try:
        failed = int(failed)
    except (TypeError, ValueError):
        failed = 0
    return max(seq_of(p[0]), failed)


def add_note(text):
    mkdirs("ota")
    with open(NOTES, "a") as f:
        f.write(text[:80] + "\n")


def prune(keep):
    """Delete every slot directory but current, previous and `keep` (a new staging)."""
    p = read()
    try:
        names = [e[0] for e in os.ilistdir("apps")]
    except OSError:
        return
    for n in names:
        if n not in (p[0], p[1], p[2], keep):
            rmtree("apps/" + n)
