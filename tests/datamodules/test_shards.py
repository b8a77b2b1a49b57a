"""Shard specs, rank/worker splitting, exact-once evaluation, bad samples, the training stream."""

import itertools
import json
import random
from pathlib import Path

import pytest
import torch
import webdataset as wds

from datamodules import shards
from tests.toy import ToyDataModule, write_regression_shards

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    """train-000000..000003.tar (8 samples each), val-000000.tar (8 samples)."""
    root = tmp_path_factory.mktemp("shards")
    write_regression_shards(root, "train", n_shards=4, per_shard=8, seed=0)
    write_regression_shards(root, "val", n_shards=1, per_shard=8, seed=1)
    return root


def test_resolve_directory_prefers_split(shard_dir):
    assert [Path(u).name for u in shards.resolve_shards(shard_dir, "val")] == ["val-000000.tar"]
    assert len(shards.resolve_shards(str(shard_dir), "train")) == 4
    assert len(shards.resolve_shards(str(shard_dir), "other")) == 5  # no other-*.tar: all


def test_resolve_glob_brace_and_list(shard_dir):
    glob_urls = shards.resolve_shards(f"{shard_dir}/train-*.tar")
    brace_urls = shards.resolve_shards(f"{shard_dir}/train-{{000000..000003}}.tar")
    assert glob_urls == brace_urls and len(glob_urls) == 4
    listed = shards.resolve_shards([f"{shard_dir}/val-000000.tar", f"{shard_dir}/train-00000[01].tar"])
    assert [Path(u).name for u in listed] == ["val-000000.tar", "train-000000.tar", "train-000001.tar"]


@pytest.mark.parametrize("spec", ["{d}/nothing-*.tar", "{d}/train-{{000000..000009}}.tar", "{d}/missing"])
def test_resolve_missing_is_a_clear_error(shard_dir, spec):
    with pytest.raises(ValueError, match="shard"):
        shards.resolve_shards(spec.format(d=shard_dir), "train")


def test_resolve_pipe_needs_opt_in():
    with pytest.raises(ValueError, match="allow_pipe"):
        shards.resolve_shards("pipe:cat a.tar")
    assert shards.resolve_shards("pipe:cat a-{0..1}.tar", allow_pipe=True) == ["pipe:cat a-0.tar", "pipe:cat a-1.tar"]


def test_node_and_worker_splitting_is_disjoint_and_complete(monkeypatch):
    items = list(range(23))
    seen = []
    for rank in range(2):
        for worker in range(2):
            monkeypatch.setattr(shards, "worker_id_and_count", lambda w=worker: (w, 2))
            seen.append(list(shards.WorkerSplitter()(shards.NodeSplitter(rank, 2)(items))))
    flat = [x for part in seen for x in part]
    assert sorted(flat) == items and all(part for part in seen)


def _keys(loader) -> list[str]:
    return [k for batch in loader for k in batch]


def _eval_keys(urls, rank, world, workers, counter=None):
    loader = shards.eval_loader(urls, decode=lambda s: s["__key__"], collate=list, batch_size=3,
                                rank=rank, world_size=world, num_workers=workers,
                                counter=counter or shards.SkipCounter())
    return _keys(loader)


@pytest.mark.parametrize("n_shards", [1, 4])
def test_evaluation_reads_each_sample_once(shard_dir, n_shards):
    """1 shard < 2 ranks × 2 workers: split by sample; 4 shards: split by shard."""
    urls = shards.resolve_shards(shard_dir, "train")[:n_shards]
    per_rank = [_eval_keys(urls, rank, 2, workers=2) for rank in range(2)]
    assert all(per_rank)
    flat = [k for keys in per_rank for k in keys]
    assert len(flat) == len(set(flat)) == 8 * n_shards


def test_bad_sample_is_skipped_and_counted(tmp_path):
    with wds.TarWriter(str(tmp_path / "test-000000.tar")) as sink:
        sink.write({"__key__": "good", "json": json.dumps({"x": [0.0] * 4, "y": 0.0})})
        sink.write({"__key__": "bad", "json": b"{not json"})
        sink.write({"__key__": "short", "json": json.dumps({"x": [0.0], "y": 0.0})})
    data = ToyDataModule(train_shards=str(tmp_path), test_shards=str(tmp_path), batch_size=4)
    data.setup("test")
    batches = list(data.test_dataloader())
    assert len(batches) == 1 and batches[0][0].shape == (1, 4)
    assert data.skipped_samples == 2


def _train_loader(urls, seed=0, rank=0, workers=0):
    return shards.train_loader(urls, decode=lambda s: s["__key__"], collate=list, batch_size=4,
                               batches_per_epoch=5, shuffle_buffer=8, seed=seed, rank=rank,
                               num_workers=workers, counter=shards.SkipCounter())


def _train_keys(urls, seed=0, rank=0, epochs=1, workers=0):
    loader = _train_loader(urls, seed, rank, workers)
    return [_keys(loader) for _ in range(epochs)]


def test_training_stream_is_deterministic_and_reseeded(shard_dir):
    urls = shards.resolve_shards(shard_dir, "train")
    (first,) = _train_keys(urls)
    assert len(first) == 20  # with_epoch: exactly 5 batches of 4
    assert _train_keys(urls) == [first]
    assert _train_keys(urls, seed=1) != [first]
    assert _train_keys(urls, rank=1) != [first]
    epoch1, epoch2 = _train_keys(urls, epochs=2)
    assert epoch1 == first and epoch2 != first


def test_training_stream_with_workers_yields_exact_epochs(shard_dir):
    urls = shards.resolve_shards(shard_dir, "train")
    keys = _train_keys(urls, workers=2)
    assert len(keys[0]) == 20 and keys == _train_keys(urls, workers=2)


def _key_and_draw(sample):
    """A decoder that draws from the global RNGs, like random windows and crops do."""
    return sample["__key__"], round(random.random(), 6), round(torch.rand(()).item(), 6)


def random_groups(items):
    """A stateful batcher drawing from the global RNG: groups of 2-5 items (like packing)."""
    group = []
    for item in items:
        group.append(item)
        if len(group) >= random.randint(2, 5):
            yield group
            group = []


@pytest.mark.parametrize("batcher", [None, random_groups], ids=["batched", "stateful_batcher"])
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("stop", [1, 3, 5])
def test_training_stream_resumes_where_it_stopped(shard_dir, workers, stop, batcher):
    """A loader restored from ``state_dict`` after ``stop`` batches of epoch 1 yields what an
    uninterrupted loader yields next (decoders' and batchers' global-RNG draws included), in
    epoch 2 too."""
    urls = shards.resolve_shards(shard_dir, "train")

    def loader():
        return shards.train_loader(urls, decode=_key_and_draw, collate=list, batch_size=4,
                                   batches_per_epoch=5, shuffle_buffer=8, seed=0, rank=0,
                                   num_workers=workers, counter=shards.SkipCounter(), batcher=batcher)

    uninterrupted = loader()
    expected = list(uninterrupted) + list(uninterrupted)
    first = loader()
    seen = list(itertools.islice(iter(first), stop))
    state = first.state_dict()
    assert state == {"epoch": 1, "batches": stop}
    resumed = loader()
    resumed.load_state_dict(state)
    rest_of_epoch = list(resumed) if stop < 5 else []  # a finished epoch: the next pass is epoch 2
    assert seen + rest_of_epoch + list(resumed) == expected


def test_training_stream_leaves_the_global_rng_alone(shard_dir):
    """Without workers the decoders run in the training process: their draws come from the
    loader's own RNG states, so the model's (dropout, noise) do not depend on the data."""
    loader = shards.train_loader(shards.resolve_shards(shard_dir, "train"), decode=_key_and_draw,
                                 collate=list, batch_size=4, batches_per_epoch=5, shuffle_buffer=8,
                                 seed=0, rank=0, num_workers=0, counter=shards.SkipCounter())
    torch.manual_seed(7)
    random.seed(7)
    list(loader)
    after = torch.rand(()).item(), random.random()
    torch.manual_seed(7)
    random.seed(7)
    assert after == (torch.rand(()).item(), random.random())


def test_default_dataset_built_once(tmp_path):
    data = ToyDataModule(cache_dir=str(tmp_path), samples_per_shard=4)
    data.setup("fit")
    assert len(data.urls["train"]) == 4 and len(data.urls["val"]) == 2
    marker = next(tmp_path.rglob("COMPLETE"))
    stamp = marker.stat().st_mtime_ns
    ToyDataModule(cache_dir=str(tmp_path)).setup("test")
    assert marker.stat().st_mtime_ns == stamp


def test_missing_train_shards_fail_before_compute(tmp_path):
    data = ToyDataModule(train_shards=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="not found"):
        data.setup("fit")


def test_datamodule_batches_are_tensors(tmp_path):
    data = ToyDataModule(cache_dir=str(tmp_path), samples_per_shard=4, batch_size=2, samples_per_epoch=6)
    data.setup("fit")
    batches = list(data.train_dataloader())
    assert len(batches) == 3
    x, y = batches[0]
    assert x.shape == (2, 4) and y.shape == (2, 1) and torch.allclose(x.sum(1, keepdim=True), y, atol=1e-5)


def test_prepare_registry_runs_a_registered_kind(tmp_path, monkeypatch, capsys):
    from datamodules import prepare

    monkeypatch.setattr(prepare, "KINDS", {"toy": "tests.toy", "missing": "datamodules.prepare.nope"})
    assert list(prepare.available_kinds()) == ["toy"]
    srcs = []
    for i, x in enumerate([[0.0] * 4, [1.0] * 4, [1.0], [2.0] * 4]):
        srcs.append(tmp_path / f"s{i}.json")
        srcs[-1].write_text(json.dumps({"x": x, "y": sum(x)}))
    assert prepare.main(["toy", *map(str, srcs), "--out", str(tmp_path / "out"), "--split", "val"]) == 0
    assert "wrote 3 samples to 2 shard(s)" in capsys.readouterr().out
    assert len(shards.resolve_shards(tmp_path / "out", "val")) == 2
