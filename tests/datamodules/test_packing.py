"""Packed LM batches: cu_seqlens consistent with the tokens, labels −100 exactly where there is no
next token, nothing dropped, padding only at the stream's end, whole-document evaluation."""

import random

import pytest
import torch

from datamodules.packing import PackedWindows, WindowBuilder
from datamodules.prepare import main as prepare_main
from datamodules.text import IGNORE_INDEX, TextDataModule, stdlib_files
from datamodules.tokenizers import ByteTokenizer
from tests.datamodules.test_text import _doc, _write

BOS, PAD = ByteTokenizer.bos_id, ByteTokenizer.pad_id


def _documents(lengths, seed=0) -> list[torch.Tensor]:
    """<bos> + random bytes, one per length."""
    g = torch.Generator().manual_seed(seed)
    return [torch.cat([torch.tensor([BOS]), torch.randint(0, 256, (n,), generator=g)]) for n in lengths]


def _packer(seq_len: int, batch_size: int) -> PackedWindows:
    build = WindowBuilder(seq_len, PAD, ByteTokenizer().token_bytes)
    return PackedWindows(build, batch_size, partial=True)


def _expected_labels(docs: list[torch.Tensor]) -> torch.Tensor:
    """The next token within the same document, −100 after each document's last token."""
    return torch.cat([torch.cat([d[1:], torch.tensor([IGNORE_INDEX])]) for d in docs])


def test_packed_windows_keep_every_token_once_and_label_only_real_next_tokens():
    T, B = 16, 2
    docs = _documents([0, 3, 15, 16, 40, 2, 7])  # <bos> alone, shorter, exactly T, longer than 2T…
    batches = list(_packer(T, B)(docs))
    stream = torch.cat(docs)
    ids = torch.cat([b["input_ids"][0] for b in batches])
    labels = torch.cat([b["labels"][0] for b in batches])
    n = stream.numel()
    assert torch.equal(ids[:n], stream) and (ids[n:] == PAD).all()  # padding only at the very end
    assert torch.equal(labels[:n], _expected_labels(docs)) and (labels[n:] == IGNORE_INDEX).all()
    for b in batches:
        row = b["input_ids"].size(1)
        assert b["input_ids"].shape == b["labels"].shape == b["label_bytes"].shape == (1, row)
        cu = b["cu_seqlens"].tolist()
        assert b["cu_seqlens"].dtype == torch.int32 and cu[0] == 0 and cu[-1] == row
        assert set(range(0, row + 1, T)) <= set(cu)  # every window starts a document (afresh)
        starts = torch.zeros(row, dtype=torch.bool)
        starts[cu[:-1]] = True
        real_starts = b["input_ids"][0] == BOS
        assert (starts | ~real_starts).all()  # every <bos> starts a segment
        assert torch.equal(b["label_bytes"][0], (b["labels"][0] != IGNORE_INDEX).long())
    rows = [b["input_ids"].size(1) for b in batches]  # 90 tokens: 6 windows of 16, the last padded
    assert rows == [B * T] * 3


def test_shuffled_training_permutes_a_long_documents_full_windows_only():
    T = 8
    docs = _documents([3, 100, 4])  # 4 tokens, then 101 = 4 + 12 full windows + 1, then 5
    build = WindowBuilder(T, PAD, ByteTokenizer().token_bytes)
    plain = list(PackedWindows(build, 1, partial=True).windows(docs))
    random.seed(0)
    shuffled = list(PackedWindows(build, 1, partial=True, shuffle=True).windows(docs))
    key = [tuple(w["input_ids"].tolist()) for w in plain]
    assert [tuple(w["input_ids"].tolist()) for w in shuffled] != key
    assert sorted(tuple(w["input_ids"].tolist()) for w in shuffled) == sorted(key)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in ((plain[0], shuffled[0]), (plain[-1], shuffled[-1])))


def test_packing_is_a_deterministic_function_of_the_stream():
    docs = _documents([5, 30, 1, 12])
    first, second = list(_packer(8, 3)(docs)), list(_packer(8, 3)(docs))
    assert all(torch.equal(a[k], b[k]) for a, b in zip(first, second) for k in a)


@pytest.mark.parametrize("seq_len", [8192, 32768])
def test_packing_many_small_files_wastes_under_2_percent(seq_len):
    """The standard library's sources (median ≈ 6.5 KB): labels that are not real next tokens
    (a document's last token, the stream's final padding) are < 2 % of the positions."""
    _, files = stdlib_files()
    docs = [torch.cat([torch.tensor([BOS]), ByteTokenizer().encode(f.read_text("utf-8", "replace"))])
            for f in files[:400]]
    batches = list(_packer(seq_len, 1)(docs))
    labels = torch.cat([b["labels"][0] for b in batches])
    waste = (labels == IGNORE_INDEX).float().mean().item()
    assert sum(d.numel() for d in docs) > 50 * seq_len and waste < 0.02


def test_evaluation_packs_whole_documents_and_streams_long_ones():
    T = 16
    dm = TextDataModule(seq_len=T, pack=True, batch_size=2)
    docs = _documents([3, 10, 14, 40, 2], seed=1)  # 4, 11, 15, 41 (long), 3 tokens
    batches = list(dm.batcher("test")(docs))
    long_doc = [b for b in batches if b.get("one_document")]
    packed = [b for b in batches if not b.get("one_document")]
    (long_doc,) = long_doc
    assert long_doc["input_ids"].shape == (3, T)  # 40 labels in 3 windows, scored in order
    assert torch.equal(long_doc["labels"][long_doc["labels"] != IGNORE_INDEX], docs[3][1:])
    # whole documents only: 4 + 11 do not fit with 15, which opens the next window
    cus = [b["cu_seqlens"].tolist() for b in packed]
    assert cus == [[0, 4, 15, 16, 31, 32], [0, 3, 16]]
    short = [d for i, d in enumerate(docs) if i != 3]
    labels = torch.cat([b["labels"][0] for b in packed])
    assert torch.equal(labels[labels != IGNORE_INDEX], torch.cat([d[1:] for d in short]))
    val = TextDataModule(seq_len=T, pack=True, batch_size=2, max_eval_windows=2).batcher("val")
    assert next(b for b in val(docs) if b.get("one_document"))["input_ids"].shape == (2, T)


def test_strided_evaluation_gives_independent_rows_of_a_long_document():
    T = 16
    docs = _documents([3, 40], seed=1)  # 40 labels of the long one: windows at 0, 8, 16, 24
    batches = list(TextDataModule(seq_len=T, pack=True, batch_size=3, eval_stride=8).batcher("test")(docs))
    rows = [b for b in batches if "cu_seqlens" not in b]
    assert [b["input_ids"].shape for b in rows] == [(3, T), (1, T)]  # batch_size rows at a time
    assert not any(b.get("one_document") for b in batches)  # each row from fresh state
    labels = torch.cat([b["labels"] for b in rows]).flatten()
    assert torch.equal(labels[labels != IGNORE_INDEX], docs[1][1:])
    assert torch.equal(rows[0]["input_ids"][1], docs[1][8:24])


def test_packed_train_loader_yields_one_row_of_batch_size_windows(tmp_path):
    for i, n in enumerate((30, 5, 70)):
        _write(tmp_path / f"doc{i}.txt", chr(ord("a") + i) * n)
    prepare_main(["text", str(tmp_path), "--out", str(tmp_path / "shards")])
    dm = TextDataModule(seq_len=16, pack=True, train_shards=str(tmp_path / "shards"), batch_size=2,
                        samples_per_epoch=8, shuffle_buffer=0)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    # samples_per_epoch counts windows: 8 windows of 2 per batch
    assert len(batches) == 4 and all(b["input_ids"].shape == (1, 32) for b in batches)
    assert dm.decoder("train") == dm.document_ids and dm.decode_sample(_doc("")) is None
