"""Small helpers shared by the top-level scripts: one-line CLI errors and stops, typed flag
parsers, dataclass configs filled from a Python file plus --key=value, atomic writes."""
import argparse
import dataclasses
import difflib
import json
import os
import signal
import sys
import tempfile


class CliError(Exception):
    """A user mistake: printed as one line, exit code 2, never a traceback."""


def fail(prog, message):
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


class StopSignal(Exception):
    """SIGTERM, raised wherever the program is, as Ctrl-C raises KeyboardInterrupt."""


def _raise_stop(signum, frame):
    raise StopSignal()


def run_program(prog, body, kept=lambda: "nothing partial was left"):
    """Run body() the way every program meets a fault: a CliError (a bad request, a failed write)
    is one line and exit 2; Ctrl-C / SIGTERM is one line saying what was kept (`kept()`) and exit
    130 / 143. Never a traceback for either. Returns body()'s value."""
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        return body()
    except CliError as e:
        fail(prog, str(e))
    except (KeyboardInterrupt, StopSignal) as e:
        name, code = ("SIGTERM", 143) if isinstance(e, StopSignal) else ("SIGINT", 130)
        print(f"\n{prog}: {name}: stopped; {kept()}", file=sys.stderr)
        sys.exit(code)
    finally:
        signal.signal(signal.SIGTERM, previous)


def write_or_fail(write, path, *args):
    """write(path, *args), or a CliError naming the path and the cause (no space, read-only, a
    file where a folder should be); the writers used here leave nothing half-written."""
    try:
        return write(path, *args)
    except OSError as e:
        raise CliError(f"cannot write {path}: {e.strerror or e}") from None


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (not usage + traceback), exit 2."""

    def error(self, message):
        fail(self.prog, message)


def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_float(text):
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def fraction_in(low_open, high_closed):
    """A float in (low_open, high_closed]."""

    def parse(text):
        value = float(text)
        if not low_open < value <= high_closed:
            raise argparse.ArgumentTypeError(f"must be in ({low_open}, {high_closed}], got {text}")
        return value

    return parse


# ----------------------------------------------------------------------------- configs

def _convert(text, field_type, key):
    """Parse one --key=value string into the type of the dataclass field."""
    type_name = field_type if isinstance(field_type, str) else field_type.__name__
    if type_name == "bool":
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise CliError(f"--{key} expects true/false, got {text!r}")
    if type_name == "int":
        try:
            return int(text)
        except ValueError:
            raise CliError(f"--{key} expects an integer, got {text!r}") from None
    if type_name == "float":
        try:
            return float(text)
        except ValueError:
            raise CliError(f"--{key} expects a number, got {text!r}") from None
    return text


def _unknown_key_message(key, valid):
    close = difflib.get_close_matches(key, valid, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return f"unknown config key {key!r}{hint}; valid keys: {', '.join(valid)}"


def load_config(config_cls, argv):
    """Build a dataclass from `[config_file.py] [--key=value ...]`.

    The config file is plain Python assignments (`n_layer = 8`); only names that are
    fields of config_cls are allowed, so a typo is an error instead of being ignored.
    """
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    values = {}
    for arg in argv:
        if arg.startswith("--"):
            if "=" not in arg:
                raise CliError(f"expected --key=value, got {arg!r}")
            key, text = arg[2:].split("=", 1)
            if key not in fields:
                raise CliError(_unknown_key_message(key, list(fields)))
            values[key] = _convert(text, fields[key].type, key)
        else:
            values.update(_read_config_file(arg, fields))
    for key, value in values.items():
        expected = fields[key].type if isinstance(fields[key].type, str) else fields[key].type.__name__
        if expected == "float" and isinstance(value, int) and not isinstance(value, bool):
            values[key] = float(value)
        elif type(value).__name__ != expected:
            raise CliError(f"{key} expects {expected}, got {value!r}")
    config = config_cls(**values)
    if hasattr(config, "validate"):
        config.validate()
    return config


def config_file_values(path):
    """{name: value} of a config file's assignments (names starting with _, functions and modules
    left out), unchecked."""
    if not os.path.isfile(path):
        raise CliError(f"config file not found: {path}")
    with open(path) as f:
        source = f.read()
    namespace = {}
    try:
        exec(compile(source, path, "exec"), {}, namespace)
    except Exception as e:  # a config file is user input: report it in one line
        raise CliError(f"cannot run config file {path}: {type(e).__name__}: {e}") from None
    return {key: value for key, value in namespace.items()
            if not (key.startswith("_") or callable(value) or type(value).__name__ == "module")}


def _read_config_file(path, fields):
    values = config_file_values(path)
    for key in values:
        if key not in fields:
            raise CliError(f"{path}: " + _unknown_key_message(key, list(fields)))
    return values


# ----------------------------------------------------------------------------- files

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


# ----------------------------------------------------------------------------- one run per folder


class FolderLock:
    """A lock file naming the process and host that owns an output folder for a whole run.

    Taken atomically (O_CREAT | O_EXCL). A lock held by a live process is a CliError naming
    it; a lock left by a process that no longer exists on this host is taken over with a
    warning. Released (the file removed) on exit from the with-block.
    """

    def __init__(self, path, what):
        self.path, self.what, self.held = str(path), what, False

    def __enter__(self):
        import json
        import socket
        import time

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
    import json

    try:
        with open(path) as f:
            holder = json.load(f)
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}  # unreadable: a run killed while writing it


def lock_age(path):
    import time

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
