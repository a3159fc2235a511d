"""Placeholder for the lead's demo (issue 6)."""

import sys


def main() -> int:
    print("citysense-demo: not yet (issue 6)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
