"""msam-train whose run-directory writes pause halfway, a window to kill a process in mid-write:

    python tests/faults/slow_writes.py <msam-train arguments>

The fault is injected from outside: msam.runs resolves `open` in its module namespace before the
builtins, so binding a pausing `open` there changes nothing in the production code.
"""

import builtins
import sys
import time

import msam.runs
from msam.train import main

PAUSE_SECONDS = 0.3


class PausesHalfway:
    """A file opened for writing whose write() stops for PAUSE_SECONDS after half the bytes."""

    def __init__(self, handle):
        self.handle = handle

    def write(self, data):
        half = len(data) // 2
        self.handle.write(data[:half])
        self.handle.flush()
        time.sleep(PAUSE_SECONDS)
        return half + self.handle.write(data[half:])

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        self.handle.__enter__()
        return self

    def __exit__(self, *exc):
        return self.handle.__exit__(*exc)


def pausing_open(path, mode="r", *args, **kwargs):
    handle = builtins.open(path, mode, *args, **kwargs)
    return PausesHalfway(handle) if "w" in mode else handle


if __name__ == "__main__":
    msam.runs.open = pausing_open
    sys.argv = ["msam-train", *sys.argv[1:]]
    main()
