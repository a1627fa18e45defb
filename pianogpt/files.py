"""Files that are never half-written: atomic writes, a tolerant JSON-lines reader, the folder lock.

The reader survives a writer killed mid-line; the lock gives an output folder to one run.
"""
import json
import os
import socket
import sys
import tempfile
import time

from pianogpt.cli import CliError


def atomic_write_bytes(path, data):
    """Write to a temp file in the same folder, fsync, then rename over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_jsonl(path):
    """The records of a JSON-lines log, skipping lines that do not parse (a run killed mid-write);
    [] when the file does not exist (yet)."""
    records = []
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
    return records


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode("utf-8"))


class FolderLock:
    """A lock file naming the process and host that owns an output folder for a whole run.

    Taken atomically (O_CREAT | O_EXCL). A lock held by a live process is a CliError naming
    it; a lock left by a process that no longer exists on this host is taken over with a
    warning. Released (the file removed) on exit from the with-block.
    """

    def __init__(self, path, what):
        self.path, self.what, self.held = str(path), what, False

    def __enter__(self):
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:])[:300]}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = read_lock(self.path)
                if not holder and lock_age(self.path) < 10:
                    holder = {"pid": "?", "host": me["host"], "command": "a run that is taking it right now"}
                    raise CliError(f"{self.what} is in use by {describe_holder(holder)} (lock {self.path})") from None
                if holder_is_alive(holder, me["host"]):
                    raise CliError(f"{self.what} is in use by {describe_holder(holder)} (lock {self.path}); wait for "
                                   f"that run to finish or choose another folder") from None
                print(f"warning: taking over the stale lock {self.path} of {describe_holder(holder)}, which no longer "
                      f"runs", file=sys.stderr)
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise CliError(f"cannot take the lock {self.path}: another run keeps taking it")

    def __exit__(self, *exc):
        if self.held and read_lock(self.path).get("pid") == os.getpid():
            os.unlink(self.path)
        self.held = False
        return False


def read_lock(path):
    try:
        with open(path) as f:
            holder = json.load(f)
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}  # unreadable: a run killed while writing it


def lock_age(path):
    try:
        return time.time() - os.path.getmtime(path)
    except OSError:
        return float("inf")


def holder_is_alive(holder, this_host):
    """A holder on another host cannot be checked, so it counts as alive."""
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    if holder.get("host") != this_host:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_holder(holder):
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} ({holder.get('command', '?')}, "
            f"started {holder.get('started', '?')})")


def write_or_fail(write, path, *args):
    """write(path, *args), or a CliError naming the path and the cause (no space, read-only, a
    file where a folder should be); the writers used here leave nothing half-written."""
    try:
        return write(path, *args)
    except OSError as e:
        raise CliError(f"cannot write {path}: {e.strerror or e}") from None
