"""A tiny test runner for MicroPython: `micropython runner.py test_mod [test_mod ...]`.

Runs every function named test_* of each module in sorted order and prints one line
per test, `ok mod.name` or `FAIL mod.name: Type: message`, then `PASSED n` or
`FAILED k of n`. Exit status 0 only if every test passed.
"""

import gc
import sys


def run(modules):
    passed = 0
    failed = 0
    for modname in modules:
        mod = __import__(modname)
        for name in sorted(n for n in dir(mod) if n.startswith("test_")):
            gc.collect()
            try:
                getattr(mod, name)()
            except Exception as exc:
                failed += 1
                print("FAIL %s.%s: %s: %s" % (modname, name, type(exc).__name__, exc))
                if hasattr(sys, "print_exception"):
                    sys.print_exception(exc)
            else:
                passed += 1
                print("ok %s.%s" % (modname, name))
    if failed:
        print("FAILED %d of %d" % (failed, passed + failed))
        return 1
    print("PASSED %d" % passed)
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
