"""One run per output directory: an advisory lock file holding the owner's pid.

The lock is an ``flock`` on ``OUTPUT_DIR/.ptychopinn.lock``: the kernel releases it when the
owner exits, however it exits (a SIGKILL included), so a lock file left behind by a dead run is
detected as stale and taken over; a live owner makes the second run fail at once, naming its pid.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from ptychopinn.errors import OutputLockedError
from ptychopinn.log import get_logger

log = get_logger("io")

LOCK_NAME = ".ptychopinn.lock"


def _owner(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 4096).decode() or "{}")
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def output_lock(directory: str | os.PathLike, what: str = "run"):
    """Hold the output directory's lock for the duration of the block.

    Raises OutputLockedError when another live process holds it. Reentrant for one process is
    not needed (one ``fit`` holds it) and not provided.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _owner(fd)
            os.close(fd)
            pid = owner.get("pid", "unknown")
            since = owner.get("started", "an unknown time")
            raise OutputLockedError(
                f"{directory}: in use by another ptychopinn {owner.get('what', 'run')} (pid {pid} "
                f"on {owner.get('host', 'this machine')}, since {since}); wait for it to finish or "
                "choose another --output-dir"
            ) from None
        # the file may have been unlinked by its previous owner between open and flock
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    previous = _owner(fd)
    if previous.get("pid"):
        log.warning(
            "%s: taking over a stale lock of a run that no longer exists (pid %s, %s)",
            directory,
            previous.get("pid"),
            previous.get("started", "?"),
        )
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(
        fd,
        json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "what": what,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        ).encode(),
    )
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)
