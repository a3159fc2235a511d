"""Runs first on every boot: counts crash-loop boots, decides safe mode.

A boot counts as a crash-loop boot until the app has run healthy for a few minutes
(the app then resets the counter, see citysense.app). After 5 such boots in a row the
node comes up in SAFE MODE: main.py does not start the app, no watchdog is armed and
the REPL stays usable for a technician (`import citysense.safe; citysense.safe.clear()`
or a re-provisioning leaves safe mode on the next boot).
"""

import gc

gc.collect()
