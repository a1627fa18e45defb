"""The command line of every program: one-line errors, the one way to stop, and flag types.

A bad request is one line and exit 2; a signal is one line saying what was kept and exit 130 / 143.
"""
import argparse
import os
import signal
import sys


class CliError(Exception):
    """A user mistake: printed as one line, exit code 2, never a traceback."""


def fail(prog, message):
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


class Stopped(Exception):
    """SIGINT or SIGTERM stopped the program: .name, .code (128 + the signal: 130, 143). .kept, where
    the program knows better than run_program's kept() what it kept (train.py: its checkpoint)."""

    def __init__(self, signum, kept=None):
        self.signum, self.name, self.code, self.kept = signum, signal.Signals(signum).name, 128 + signum, kept
        super().__init__(self.name)


def _raise_stopped(signum, frame):
    raise Stopped(signum)


def run_program(prog, body, kept=lambda: "nothing partial was left"):
    """Run body() the way every program meets a fault: a CliError (a bad request, a failed write)
    is one line and exit 2; Ctrl-C / SIGTERM stops wherever the program is (SIGTERM raised as
    Stopped, as Ctrl-C raises KeyboardInterrupt) and is one line saying what was kept and exit 130
    / 143. A loop that must finish its step first holds the signals in StopAtSafePoint and raises
    Stopped itself. Never a traceback for either. Returns body()'s value."""
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        return body()
    except CliError as e:
        fail(prog, str(e))
    except (KeyboardInterrupt, Stopped) as e:
        stop = e if isinstance(e, Stopped) else Stopped(signal.SIGINT)
        print(f"\n{prog}: {stop.name}: stopped; {stop.kept or kept()}", file=sys.stderr)
        sys.exit(stop.code)
    finally:
        signal.signal(signal.SIGTERM, previous)


class StopAtSafePoint:
    """SIGINT / SIGTERM, while inside this block, only ask to stop: the loop reads asked() at a
    point where stopping loses nothing (train.py: between steps, after a checkpoint) and raises
    Stopped there. A second Ctrl-C stops at once (the last checkpoint is kept)."""

    def __init__(self, prog):
        self.prog, self.signum, self.previous = prog, 0, {}

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.previous[signum] = signal.signal(signum, self.handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        return False

    def handle(self, signum, frame):
        if self.signum and signum == signal.SIGINT:
            print(f"\n{self.prog}: second interrupt: stopping now (the last checkpoint is kept)", file=sys.stderr,
                  flush=True)
            os._exit(130)
        self.signum = signum
        print(f"\n{self.prog}: {signal.Signals(signum).name}: finishing this step, then saving a checkpoint "
              f"(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def asked(self):
        """The signal that asked to stop, or 0."""
        return self.signum


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
