"""``python -m datamodules.prepare text SRC... --out DIR [--split NAME] [--range A:B] [--tokenizer T]``

Text files, or folders of them (``--glob``, recursive), become webdataset shards
``DIR/NAME-%06d.tar`` with **one document per sample**: ``txt`` (the text), ``json`` (source path
and range) and, with ``--tokenizer``, ``ids.npy`` (the pre-tokenized ids, used when the
datamodule's tokenizer matches). Every file is validated: not UTF-8 or empty (after the range and
stripping) → skipped and counted. ``--range 0:0.9`` keeps that fraction of each file's characters,
so one file (tinyshakespeare) splits into train (``0:0.9``) and validation (``0.9:1``).

Cleaning, each step opt-in and applied before the range: ``--strip-gutenberg`` keeps the text
between Project Gutenberg's markers, ``--lf-newlines`` turns CRLF and CR line ends into LF (Project
Gutenberg distributes CRLF), ``--ascii-punctuation`` writes typographic punctuation (curly quotes,
dashes, ellipsis, ™, bullets, non-breaking space) as its ASCII equivalent, so a byte-level model
trained on plain-ASCII text (tinyshakespeare) is not scored on multi-byte characters it never saw.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from datamodules.prepare.writer import ShardSink
from datamodules.tokenizers import Tokenizer, build_tokenizer

HELP = "text files or folders -> one document per sample (txt [+ ids.npy])"

GUTENBERG_START = re.compile(r"^\*\*\* ?START OF .*$", re.MULTILINE)
GUTENBERG_END = re.compile(r"^\s*\*\*\* ?END OF .*$", re.MULTILINE)
ASCII_PUNCTUATION = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
                                   "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
                                   "\u2013": "-", "\u2014": "--", "\u2015": "--", "\u2026": "...",
                                   "\u2122": "(TM)", "\u2022": "*", "\u00a0": " "})

Cleaning = Callable[[str], str]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--range", default="0:1", help="fraction A:B of each file's characters to keep (default 0:1)")
    parser.add_argument("--glob", default="*.txt", help="files to take from folders, recursively (default *.txt)")
    parser.add_argument("--tokenizer", default=None,
                        help="also store ids.npy pre-tokenized with 'byte' or a .tiktoken file")
    parser.add_argument("--strip-gutenberg", action="store_true",
                        help="keep only the text between Project Gutenberg's *** START/END OF markers")
    parser.add_argument("--lf-newlines", action="store_true", help="turn CRLF and CR line ends into LF")
    parser.add_argument("--ascii-punctuation", action="store_true",
                        help="curly quotes, dashes, ellipsis, (TM), bullets, non-breaking space -> ASCII")
    parser.add_argument("--maxcount", type=int, default=1000, help="documents per shard (default 1000)")


def parse_range(spec: str) -> tuple[float, float]:
    """``"A:B"`` with 0 <= A < B <= 1 -> (A, B)."""
    try:
        a, b = (float(x) for x in spec.split(":"))
    except ValueError:
        raise ValueError(f"--range must look like A:B (e.g. 0:0.9), got {spec!r}") from None
    if not 0 <= a < b <= 1:
        raise ValueError(f"--range needs 0 <= A < B <= 1, got {spec!r}")
    return a, b


def find_files(sources: Iterable[str], pattern: str) -> list[Path]:
    """Files given directly, plus the files under each folder that match ``pattern`` (sorted)."""
    files = []
    for src in sources:
        path = Path(src).expanduser()
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob(pattern) if p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{src}: no such file or folder")
    return files


def strip_gutenberg(text: str) -> str:
    """The text between the ``*** START OF`` and ``*** END OF`` lines (all of it when absent)."""
    start, end = GUTENBERG_START.search(text), GUTENBERG_END.search(text)
    return text[start.end() if start else 0 : end.start() if end else len(text)]


def lf_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def ascii_punctuation(text: str) -> str:
    return text.translate(ASCII_PUNCTUATION)


def cleanings(gutenberg: bool = False, lf: bool = False, punctuation: bool = False) -> list[Cleaning]:
    """The cleaning steps the flags select, in the order they run (Gutenberg markers first)."""
    chosen = [(gutenberg, strip_gutenberg), (lf, lf_newlines), (punctuation, ascii_punctuation)]
    return [step for on, step in chosen if on]


def read_document(path: Path, fraction: tuple[float, float], clean: Sequence[Cleaning] = ()) -> str:
    """The UTF-8 text of ``path`` (BOM dropped), cleaned, cut to ``fraction`` of its characters.

    Raises:
        UnicodeDecodeError: the file is not UTF-8.
    """
    text = path.read_bytes().decode("utf-8-sig")
    for step in clean:
        text = step(text)
    a, b = fraction
    return text[round(a * len(text)) : round(b * len(text))]


def documents(files: Iterable[Path], fraction: tuple[float, float], sink: ShardSink,
              clean: Sequence[Cleaning] = (), root: Optional[Path] = None) -> Iterator[tuple[str, str]]:
    """(source name, text) of every readable file; unreadable ones are reported to ``sink``."""
    for path in files:
        name = str(path.relative_to(root)) if root else str(path)
        try:
            yield name, read_document(path, fraction, clean)
        except UnicodeDecodeError:
            sink.skip(name, "not UTF-8")
        except OSError as e:
            sink.skip(name, f"unreadable ({type(e).__name__})")


def validate(sample: dict) -> Optional[str]:
    return "empty" if not sample["txt"].strip() else None


def document_sample(index: int, source: str, text: str, fraction: tuple[float, float],
                    tokenizer: Optional[Tokenizer]) -> dict:
    """One webdataset sample (keys must not contain dots: the source goes into the json)."""
    sample = {"__key__": f"doc{index:08d}", "txt": text, "json": {"source": source, "range": list(fraction)}}
    if tokenizer is not None:
        dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
        sample["ids.npy"] = tokenizer.encode(text).numpy().astype(dtype)
        sample["json"]["tokenizer"] = tokenizer.name
    return sample


def write_text_shards(files: Iterable[Path], out: Path, split: str, *, fraction: tuple[float, float] = (0.0, 1.0),
                      tokenizer: Optional[Tokenizer] = None, clean: Sequence[Cleaning] = (), maxcount: int = 1000,
                      root: Optional[Path] = None) -> ShardSink:
    """Writes ``out/<split>-%06d.tar``, one validated document per sample; returns the closed sink."""
    with ShardSink(out, split, maxcount=maxcount, validate=validate) as sink:
        for i, (source, text) in enumerate(documents(files, fraction, sink, clean, root)):
            sink.write(document_sample(i, source, text, fraction, tokenizer))
    return sink


def run(args: argparse.Namespace) -> int:
    fraction = parse_range(args.range)
    files = find_files(args.src, args.glob)
    if not files:
        raise SystemExit(f"no files found in {args.src} (folders are searched for --glob {args.glob!r})")
    tokenizer = build_tokenizer(args.tokenizer) if args.tokenizer else None
    sink = write_text_shards(files, Path(args.out), args.split, fraction=fraction, tokenizer=tokenizer,
                             clean=cleanings(args.strip_gutenberg, args.lf_newlines, args.ascii_punctuation),
                             maxcount=args.maxcount)
    return 0 if sink.written else 1
