"""What a run does on a fault it cannot skip: stop with one clear message, exit code 1."""

from __future__ import annotations


class RunStopped(RuntimeError):
    """The run cannot usefully continue (e.g. too many consecutive skipped steps).

    The command line prints its message without a traceback and exits with code 1; a
    checkpoint from before the fault is left in place (none is written for the failing steps).
    """
