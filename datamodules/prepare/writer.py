"""Writing validated samples to ``DIR/NAME-%06d.tar`` shards, with a summary of what was skipped."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable
from typing import Any, Optional

import webdataset as wds

log = logging.getLogger(__name__)

Validator = Callable[[dict[str, Any]], Optional[str]]


class ShardSink:
    """Writes webdataset samples to ``out_dir/name-%06d.tar``, validating each one first.

    A sample is a dict with a unique ``__key__`` and one entry per file extension (bytes, str, or
    anything webdataset's TarWriter encodes by extension). ``validate(sample)`` returns None for a
    good sample or a short reason for a bad one; bad samples are skipped and tallied. The first
    shard is opened on the first good sample, so nothing is written when every sample is bad.

    Args:
        out_dir: output folder (created).
        name: shard name prefix, usually the split (``train``, ``val``, ``test``).
        maxcount: most samples per shard.
        maxsize: most bytes per shard.
        validate: per-sample check, see above.
    """

    def __init__(self, out_dir: str | os.PathLike, name: str = "train", maxcount: int = 1000,
                 maxsize: float = 1e9, validate: Optional[Validator] = None):
        os.makedirs(out_dir, exist_ok=True)
        self.pattern = os.path.join(os.fspath(out_dir), f"{name}-%06d.tar")
        self.maxcount, self.maxsize, self.validate = maxcount, maxsize, validate
        self.writer: Optional[wds.ShardWriter] = None
        self.written, self.skipped = 0, Counter()
        self._closed_shards = 0

    def write(self, sample: dict[str, Any]) -> bool:
        """Validates and writes ``sample``; returns whether it was written."""
        reason = self.validate(sample) if self.validate is not None else None
        if reason is not None:
            log.warning("skipping %s: %s", sample.get("__key__"), reason)
            self.skipped[reason] += 1
            return False
        if self.writer is None:
            self.writer = wds.ShardWriter(self.pattern, maxcount=self.maxcount,
                                          maxsize=self.maxsize, verbose=0)
        self.writer.write(sample)
        self.written += 1
        return True

    def skip(self, key: str, reason: str) -> None:
        """Records a sample that failed before it could be built (e.g. an unreadable source)."""
        log.warning("skipping %s: %s", key, reason)
        self.skipped[reason] += 1

    @property
    def shards(self) -> int:
        return self._closed_shards if self.writer is None else self.writer.shard

    def summary(self) -> str:
        reasons = ", ".join(f"{n} × {r}" for r, n in self.skipped.most_common())
        line = (f"wrote {self.written} samples to {self.shards} shard(s) "
                f"{self.pattern.replace('%06d', '*')}; skipped {sum(self.skipped.values())}")
        return f"{line} ({reasons})" if reasons else line

    def close(self) -> str:
        """Closes the last shard and returns (and prints) the summary line."""
        if self.writer is not None:
            self._closed_shards = self.writer.shard
            self.writer.close()
            self.writer = None
        line = self.summary()
        print(line)
        return line

    def __enter__(self) -> "ShardSink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
