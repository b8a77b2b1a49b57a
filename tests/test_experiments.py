"""Each experiment at a tiny size through its real code path (fit + test through the CLI, the plot):
the results.json schema and the plot file. The full runs' numbers are in README, not asserted here."""

import importlib
import json
from pathlib import Path

import pytest

from experiments.common import QUICK_MODEL, SHAKESPEARE, Budget, prepare_corpus

pytestmark = pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="../shared/data/lm absent")

TINY = Budget(steps=2, seq_len=64, batch_size=2, model={**QUICK_MODEL, "fast_weight.chunk": 16})
CASES = {
    "chunk_size": ((TINY, [16, 32]), {"chunk", "tokens_per_s", "gflops", "fraction_of_peak", "bpb"}, 2),
    "state_size": ((TINY, [(2, 1.0), (2, 2.0)]), {"inter_multi", "heads", "params", "state_params", "bpb"}, 2),
    "loss_by_position": ((TINY, 16), {"memory", "position", "loss"}, 3 * 16),
    "muon_momentum": ((TINY, [(False, False), (True, True)]), {"use_muon", "use_momentum", "bpb", "tokens_per_s"}, 2),
}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Shards of the first 4 KB of tinyshakespeare, prepared once for all four (the test scores all of its 10 %)."""
    root = tmp_path_factory.mktemp("experiments")
    excerpt = root / "excerpt.txt"
    excerpt.write_text(SHAKESPEARE.read_text()[:4096])
    prepare_corpus(root, excerpt)
    return root


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["main.py"])


@pytest.mark.parametrize("name", list(CASES))
def test_experiment_writes_its_rows_and_plot(name, work, tmp_path, monkeypatch):
    module = importlib.import_module(f"experiments.{name}.__main__")
    tiny, columns, count = CASES[name]
    monkeypatch.setattr(module, "QUICK", tiny)
    module.main(["--quick", "--out", str(tmp_path), "--work", str(work)])
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"rows", "setup"} and results["setup"]["quick"] is True
    assert len(results["rows"]) == count and all(set(row) == columns for row in results["rows"])
    assert all(v == v for row in results["rows"] for v in row.values() if isinstance(v, float))  # no NaN
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"


def test_a_rerun_with_the_same_work_folder_resumes_at_the_next_setting(work, tmp_path, monkeypatch):
    """Settings finished by an interrupted run are kept in ``--work`` and not trained again."""
    module = importlib.import_module("experiments.muon_momentum.__main__")
    monkeypatch.setattr(module, "QUICK", CASES["muon_momentum"][0])
    first, second = tmp_path / "first", tmp_path / "second"
    module.main(["--quick", "--out", str(first), "--work", str(work)])

    def no_training(*args, **kwargs):
        raise AssertionError("a finished setting was trained again")

    monkeypatch.setattr("experiments.common.run_lm", no_training)
    module.main(["--quick", "--out", str(second), "--work", str(work)])
    rows = [json.loads((out / "results.json").read_text())["rows"] for out in (first, second)]
    assert rows[0] == rows[1]
