"""Text data: tokenizers, `prepare text`, document windows (no packing), prompts, the stdlib default."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.prepare import main as prepare_main
from datamodules.text import IGNORE_INDEX, TextDataModule, stdlib_files, stdlib_split
from datamodules.tokenizers import ByteTokenizer, build_tokenizer
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.timeout(120)

GPT2 = REPO_ROOT / "../shared/data/lm/gpt2_tiktoken/gpt2.tiktoken"
needs_gpt2 = pytest.mark.skipif(not GPT2.is_file(), reason="../shared/data/lm absent")


def read_samples(tar_path: Path) -> list[dict]:
    """The samples of one shard as {key: {extension: bytes}}, in order."""
    samples: dict[str, dict] = {}
    with tarfile.open(tar_path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return list(samples.values())


def as_wds(sample: dict) -> dict:
    return {"__key__": "k", **sample}


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    text = "naïve → ok\n"
    ids = tok.encode(text)
    assert ids.dtype == torch.long and ids.numel() == len(text.encode())
    assert tok.decode(torch.cat([torch.tensor([tok.bos_id]), ids, torch.tensor([tok.pad_id])])) == text
    assert tok.token_bytes[ids].sum() == len(text.encode()) and tok.token_bytes[256:].sum() == 0


@needs_gpt2
def test_gpt2_tokenizer_from_local_file():
    tok = build_tokenizer(str(GPT2))
    assert tok.vocab_size == 50257 and tok.bos_id == 50256
    assert tok.encode("Hello world").tolist() == [15496, 995]
    text = "The café’s <|endoftext|> menu"
    ids = tok.encode(text)
    assert tok.decode(ids) == text and int(tok.token_bytes[ids].sum()) == len(text.encode())


def test_unknown_tokenizer_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="tokenizer must be 'byte'"):
        build_tokenizer("gpt2")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """good.txt, sub/second.txt, empty.txt (blank), latin1.txt (not UTF-8), skip.md (not *.txt)."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "sub").mkdir()
    (root / "good.txt").write_text("\ufeff" + "Hello, first document.\n" * 20, encoding="utf-8")
    (root / "sub" / "second.txt").write_text("zweites Dokument äöü\n" * 30, encoding="utf-8")
    (root / "empty.txt").write_text("  \n\n")
    (root / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (root / "skip.md").write_text("not matched by --glob")
    return root


def test_prepare_folder_validates_and_counts(corpus, tmp_path, capsys):
    assert prepare_main(["text", str(corpus), "--out", str(tmp_path), "--split", "val"]) == 0
    assert "wrote 2 samples" in capsys.readouterr().out
    samples = read_samples(tmp_path / "val-000000.tar")
    texts = [s["txt"].decode() for s in samples]
    assert texts[0].startswith("Hello") and "\ufeff" not in texts[0]  # BOM dropped
    assert {json.loads(s["json"])["source"].rsplit("/", 1)[-1] for s in samples} == {"good.txt", "second.txt"}


def test_prepare_range_splits_one_file(corpus, tmp_path):
    src = str(corpus / "sub" / "second.txt")
    prepare_main(["text", src, "--out", str(tmp_path), "--split", "train", "--range", "0:0.9"])
    prepare_main(["text", src, "--out", str(tmp_path), "--split", "val", "--range", "0.9:1"])
    train, val = (read_samples(tmp_path / f"{s}-000000.tar")[0]["txt"].decode() for s in ("train", "val"))
    whole = (corpus / "sub" / "second.txt").read_text(encoding="utf-8")
    assert train + val == whole and len(val) == pytest.approx(0.1 * len(whole), abs=1)
    with pytest.raises(ValueError, match="A:B"):
        prepare_main(["text", src, "--out", str(tmp_path), "--range", "0.9"])


def test_prepare_cleaning_flags(tmp_path):
    raw = ("Header\r\n*** START OF THE BOOK ***\r\n\u201cOh dear!\u201d\u2014she\u2019d said\u2026\r\n"
           "*** END OF THE BOOK ***\r\nLicence\u2122\r\n")
    src = str(_write(tmp_path / "book.txt", raw))
    # the START line's match ends at its \r (a regex "$" stops before \n only)
    for split, flags, expected in [
            ("a", ["--strip-gutenberg"], "\n\u201cOh dear!\u201d\u2014she\u2019d said\u2026\r\n"),
            ("b", ["--strip-gutenberg", "--lf-newlines"], "\n\u201cOh dear!\u201d\u2014she\u2019d said\u2026\n"),
            ("c", ["--strip-gutenberg", "--lf-newlines", "--ascii-punctuation"], "\n\"Oh dear!\"--she'd said...\n"),
            ("d", ["--ascii-punctuation"], raw.replace("\u201c", '"').replace("\u201d", '"').replace("\u2014", "--")
             .replace("\u2019", "'").replace("\u2026", "...").replace("\u2122", "(TM)"))]:
        prepare_main(["text", src, "--out", str(tmp_path / "out"), "--split", split, *flags])
        assert read_samples(tmp_path / "out" / f"{split}-000000.tar")[0]["txt"].decode() == expected, flags


def test_prepare_pretokenized_ids_are_used(corpus, tmp_path):
    prepare_main(["text", str(corpus / "good.txt"), "--out", str(tmp_path), "--tokenizer", "byte"])
    sample = read_samples(tmp_path / "train-000000.tar")[0]
    ids = np.load(io.BytesIO(sample["ids.npy"]))
    assert ids.dtype == np.uint16 and json.loads(sample["json"])["tokenizer"] == "byte"
    dm = TextDataModule(seq_len=8)
    doctored = {**sample, "ids.npy": _npy(np.array([1, 2, 3], dtype=np.uint16))}
    assert dm.document_ids(as_wds(doctored)).tolist() == [256, 1, 2, 3]  # the stored ids, not the text


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _doc(text: str) -> dict:
    return as_wds({"txt": text.encode(), "json": b"{}"})


def test_evaluation_windows_cover_every_token_once():
    dm = TextDataModule(seq_len=8)
    text = "abcdefghijklmnopqrstu"  # 21 bytes + <bos> = 22 tokens -> labels 1..21 in 3 windows
    windows = dm.decode_sample(_doc(text))
    assert len(windows) == 3
    batch = dm.collate([windows])
    labels = batch["labels"][batch["labels"] != IGNORE_INDEX]
    assert bytes(labels.tolist()).decode() == text
    assert batch["input_ids"][0, 0] == 256 and batch["input_ids"][1, 0] == ord("h")
    assert (batch["labels"][2, 5:] == IGNORE_INDEX).all() and (batch["input_ids"][2, 6:] == 257).all()
    assert torch.equal(batch["label_bytes"], (batch["labels"] != IGNORE_INDEX).long())
    assert len(TextDataModule(seq_len=8, max_eval_windows=2).decode_sample(_doc(text))) == 2


@pytest.mark.parametrize("stride", [1, 3, 5, 8])
def test_strided_evaluation_windows_score_every_token_once_with_at_least_t_minus_s_context(stride):
    dm = TextDataModule(seq_len=8, eval_stride=stride)
    text = "abcdefghijklmnopqrstu"  # 21 labels
    batch = dm.collate([dm.decode_test_sample(_doc(text))])
    scored = batch["labels"] != IGNORE_INDEX
    assert bytes(batch["labels"][scored].tolist()).decode() == text
    assert batch["input_ids"][0, 0] == 256  # the first window starts at <bos> and scores all it has
    assert scored[0, :8].all() and not scored[1:, : 8 - stride].any()
    for row in batch["input_ids"][1:]:  # later windows: consecutive tokens of the document (then padding)
        tokens = bytes(t for t in row.tolist() if t < 256).decode()
        assert tokens in text and len(tokens) > 8 - stride
    if stride == 8:  # s = T: the plain consecutive windows
        plain = TextDataModule(seq_len=8).collate([TextDataModule(seq_len=8).decode_test_sample(_doc(text))])
        assert all(torch.equal(batch[k], plain[k]) for k in plain)


def test_eval_stride_must_fit_the_window():
    with pytest.raises(ValueError, match="eval_stride must be None or 1 … seq_len=8, got 9"):
        TextDataModule(seq_len=8, eval_stride=9)


def test_windows_never_mix_documents():
    dm = TextDataModule(seq_len=16)
    docs = [_doc("a" * 5), _doc("b" * 40), _doc("c" * 3)]
    for decode in (dm.decode_sample, dm.decode_training_sample):
        batch = dm.collate([decode(d) for d in docs])
        for inputs, labels in zip(batch["input_ids"], batch["labels"]):
            chars = {c for c in inputs.tolist() + labels.tolist() if 0 <= c < 256}
            assert len(chars) == 1  # one document per window; the rest is <bos>/<pad>/masked
    assert dm.decode_sample(_doc("")) is None


def test_training_window_is_a_random_crop():
    dm = TextDataModule(seq_len=16)
    text = "".join(chr(ord("a") + i % 26) for i in range(200))
    starts = set()
    for _ in range(20):
        (window,) = dm.decode_training_sample(_doc(text))
        assert (window["labels"] != IGNORE_INDEX).all()
        first = bytes([window["input_ids"][0]]) if window["input_ids"][0] < 256 else b"<bos>"
        starts.add(first)
    assert len(starts) > 3


def test_train_loader_uses_training_windows(tmp_path):
    prepare_main(["text", str(_write(tmp_path / "doc.txt", "x" * 300)), "--out", str(tmp_path / "shards")])
    dm = TextDataModule(seq_len=16, train_shards=str(tmp_path / "shards"), batch_size=2, samples_per_epoch=4,
                        shuffle_buffer=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (2, 16)  # one window per document, not all 19
    assert dm.decoder("val") == dm.decode_sample


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_prompts_from_list_and_file(tmp_path):
    (tmp_path / "prompts.txt").write_text("def f():\\n    return\n\nimport os\n")
    dm = TextDataModule(prompts=["Hello"], prompts_file=str(tmp_path / "prompts.txt"), max_new_tokens=5)
    assert dm.prompt_texts() == ["Hello", "def f():\n    return", "import os"]
    items = list(dm.predict_dataloader())
    assert items[0]["input_ids"].tolist() == [[256, 72, 101, 108, 108, 111]] and items[0]["max_new_tokens"] == 5
    assert TextDataModule().prompt_texts() == [""]


def test_stdlib_corpus_split_by_file():
    root, files = stdlib_files()
    assert len(files) > 100 and not any("site-packages" in p.parts for p in files)
    splits = [stdlib_split(str(p.relative_to(root))) for p in files]
    assert {"train", "val", "test"} == set(splits) and splits.count("train") > 0.9 * len(splits)
    assert stdlib_split("json/decoder.py") == stdlib_split("json/decoder.py")


def test_embedded_default_builds_once(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "lm-cache"  # shared with tests/tasks/test_lm.py
    dm = TextDataModule(seq_len=64, cache_dir=str(cache))
    root = dm.default_dataset_root()
    assert {p.name.split("-")[0] for p in root.glob("*.tar")} == {"train", "val", "test"}
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_ids"].shape[1] == 64 and dm.skipped_samples == 0
