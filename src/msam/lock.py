"""One process per run directory: an flock on <run dir>/.lock, held while the run trains.

The kernel drops an flock when its process dies (kill -9 included), so a lock never outlives
its owner and never needs cleaning up by hand. File systems without flock support (some
network mounts) get a warning and no lock.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
from pathlib import Path

from msam.errors import RunError

log = logging.getLogger("msam")


class RunLock:
    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".lock"
        self.handle = None

    def acquire(self) -> "RunLock":
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise RunError(f"{self.path.parent} is in use by {owner}: the same run was started twice (wait for it "
                           "or stop it; runs never share a directory)") from None
        except OSError as error:
            if error.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            log.warning(f"no file locks on this file system ({error.strerror}): {self.path.parent} is not locked")
            handle.close()
            return self
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self.handle = handle
        return self

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None
