"""Shard preparation: ``python -m datamodules.prepare {nvs,text,video} SRC... --out DIR [--split NAME]``.

Each kind of data is a module registered in ``KINDS`` (sub-command → module name; the task
modules are ``datamodules/prepare/{nvs,text,video}.py``) that exposes::

    HELP: str                                  # one line for --help (optional)
    def add_arguments(parser) -> None          # kind-specific options (SRC, --out, --split exist)
    def run(args) -> int                       # write DIR/<split>-%06d.tar with ShardSink; exit code

Modules are imported lazily; a kind whose module does not exist yet is simply not offered.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
from collections.abc import Sequence
from typing import Optional

from datamodules.prepare.writer import ShardSink

# sub-command → module
KINDS = {"nvs": f"{__name__}.nvs", "text": f"{__name__}.text", "video": f"{__name__}.video"}

__all__ = ["KINDS", "ShardSink", "available_kinds", "build_parser", "main"]


def available_kinds() -> dict[str, str]:
    """The registered kinds whose module exists, as {sub-command: full module name}."""
    found = {}
    for kind, name in KINDS.items():
        if importlib.util.find_spec(name) is not None:
            found[kind] = name
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m datamodules.prepare",
                                     description="Turn raw data into validated webdataset shards.")
    sub = parser.add_subparsers(dest="kind", required=True, metavar="{" + ",".join(available_kinds()) + "}")
    for kind, name in available_kinds().items():
        module = importlib.import_module(name)
        p = sub.add_parser(kind, help=getattr(module, "HELP", None))
        p.add_argument("src", nargs="+", metavar="SRC", help="input files or folders")
        p.add_argument("--out", required=True, help="output folder for the shards")
        p.add_argument("--split", default="train", help="shard name prefix (default: train)")
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)
