"""Runs first on every boot: picks the app to run (the firmware-update pointer).

This file and main.py are the fixed part of the node: no update replaces them (a USB
deploy does). Both are compiled from source at every boot, so they stay short and
reuse names the app has (each new name is a qstr, kept for the whole boot).
The pointer `ota/boot` is "<current> <previous> <trial> <tries>" (slot names "s<seq>",
"-" for none; citysense/slots.py describes the layout):
- no trial: run `current` (apps/<current>), or the factory app in lib/ if it is "-";
- trial, tries 0, the slot complete, no ota/why: the switch. What the staging had left
  to remove after writing it (ota/ready, ota/new.csb: a power cut) is removed first,
  then tries := 1, run the trial;
- trial otherwise (it booted once and was not confirmed: it crashed, the watchdog or a
  power cut reset it, or ota/why says it failed to import or to be confirmed in time):
  roll back. The app then reports "rolled-back <version>: <why>" (sys/ota) and that
  release is never tried again (ota/failed).
Every pointer change is a temp file renamed over the old one: a power cut at any
instant leaves the old pointer or the new one, so a valid app always boots.
"""

import gc
import os
import sys


def _text(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def replace(path, s):
    with open(path + ".tmp", "w") as f:
        f.write(s)
    os.rename(path + ".tmp", path)


p = _text("ota/boot").split()
if len(p) == 4 and p[2] != "-":
    m = _text("ota/why") or ("reset" if p[3] != "0" else "")
    if not m and _text("apps/%s/.ota" % p[2]):
        for m in ("ota/ready", "ota/new.csb"):  # a staging cut after its switch left them:
            try:  # main.py would take them for a new one, and its reset would end the trial
                os.remove(m)
            except OSError:
                pass
        replace("ota/boot", "%s %s %s 1\n" % (p[0], p[1], p[2]))
        p[0] = p[2]  # the switch: this boot runs the trial
    else:
        with open("ota/notes", "a") as f:
            f.write(
                "rolled-back %s: %s\n"
                % ((_text("apps/%s/.ota" % p[2]) or "?").split()[0], m or "incomplete")
            )
        replace("ota/failed", p[2][1:])
        replace("ota/boot", "%s %s - 0\n" % (p[0], p[1]))
        if m != "reset":
            os.remove("ota/why")
if p and p[0] != "-":
    sys.path.insert(0, "apps/" + p[0])
del p
gc.collect()
