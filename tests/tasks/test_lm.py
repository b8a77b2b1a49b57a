"""LMTask end to end: CLI fit → test → predict (embedded stdlib data and ../shared/data/lm), learning
on tinyshakespeare, the 760M config at reduced width, 2-process DDP / FSDP2 runs with resume.

The runs stack a tiny YAML on configs/lm.yaml (chunk = window = 16) so they take seconds; they use
one thread (tiny matmuls on a shared 2-core machine are slower with two).
"""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from datamodules.prepare import main as prepare_main
from lact_app.cli import cli_main
from lact_app.nn import BackboneConfig, FastWeightConfig
from tasks.lm import LMTask, TokenLoss, loss_by_position_figure
from tests.checkpoints import assert_resumed_one_step, load_checkpoint
from tests.datamodules.test_text import read_samples
from tests.conftest import REPO_ROOT
from tests.models.test_lm import one_thread  # noqa: F401 (an autouse fixture)
from tests.test_cli import config_args, run_main

LM_YAML = REPO_ROOT / "configs/lm.yaml"
SHARED_LM = REPO_ROOT / "../shared/data/lm"
needs_shared = pytest.mark.skipif(not SHARED_LM.is_dir(), reason="../shared/data/lm absent")

TINY = """\
model:
  init_args: {{backbone: {{dim: 32, depth: 2, heads: 2}}, window: 16, warmup_steps: 2, position_buckets: 4,
              fast_weight: {{chunk: 16, heads: 2, low_rank: 8}}}}
data:
  init_args: {{seq_len: 48, batch_size: 2, samples_per_epoch: 4, shuffle_buffer: 4, max_eval_windows: 2,
              eval_stride: null, max_new_tokens: 8, cache_dir: {cache}, prompts: ["def main():\\\\n", "import"]}}
trainer:
  max_steps: 2
  default_root_dir: {root}
  enable_progress_bar: false
  enable_model_summary: false
  log_every_n_steps: 1
  num_sanity_val_steps: 0
  limit_val_batches: 2
  limit_test_batches: 2
"""


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["main.py"])  # LightningCLI warns about pytest's own argv
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # for the main.py subprocesses


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lm-runs")
    cache = tmp_path_factory.getbasetemp() / "lm-cache"  # shared with tests/datamodules/test_text.py
    path = root / "tiny.yaml"
    path.write_text(TINY.format(cache=cache, root=root / "logs"))
    return path


def tiny_args(tiny_yaml: Path, *extra: str) -> list[str]:
    return ["--config", str(LM_YAML), "--config", str(tiny_yaml), *extra]


def fit_test_predict(args: list[str]) -> dict:
    """fit → test → predict through the CLI; returns the test metrics, and the paths it wrote."""
    fit = cli_main(["fit", *args])
    last = Path(fit.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    tested = cli_main(["test", *args, "--ckpt_path", str(last)])
    log_dir = Path(tested.trainer.log_dir)
    predicted = cli_main(["predict", *args, "--ckpt_path", str(last)])
    generations = Path(predicted.trainer.log_dir) / "predictions" / "generations-rank0.jsonl"
    images = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    images.Reload()
    return {"fit": fit, "last": last, "metrics": json.loads((log_dir / "test_metrics.json").read_text()),
            "images": images.Tags()["images"],
            "positions": json.loads((log_dir / "loss_by_position.json").read_text()),
            "generations": [json.loads(line) for line in generations.read_text().splitlines()]}


@pytest.mark.timeout(180)
def test_cli_fit_test_predict_on_embedded_data(tiny_yaml):
    run = fit_test_predict(tiny_args(tiny_yaml))
    assert run["fit"].trainer.global_step == 2
    assert set(run["metrics"]) >= {"test/loss", "test/ppl", "test/bpb"}
    assert run["metrics"]["test/ppl"] == pytest.approx(math.exp(run["metrics"]["test/loss"]), rel=1e-4)
    assert 7.0 < run["metrics"]["test/bpb"] < 9.0  # ≈ log2(258) after two steps
    # baselines over the same tokens and bytes: one byte per token but for the end-of-text tokens
    uniform, unigram = run["metrics"]["test/baseline/uniform_bpb"], run["metrics"]["test/baseline/unigram_bpb"]
    print(f"LM test: bpb {run['metrics']['test/bpb']:.3f}, uniform {uniform:.3f}, unigram {unigram:.3f}")
    assert math.log2(258) - 1e-9 <= uniform < 1.05 * math.log2(258) and unigram < uniform
    counts = torch.load(run["last"], map_location="cpu", weights_only=False)["state_dict"]["unigram_counts"]
    assert counts.dtype == torch.long and 0 < counts.sum() <= 2 * 2 * 48  # two steps of 2 × 48 labels
    assert len(run["positions"]["loss"]) == 4 and run["positions"]["seq_len"] == 48
    assert "test/loss_by_position" in run["images"]
    assert [g["prompt"] for g in run["generations"]] == ["def main():\n", "import"]
    assert all(len(g["tokens"]) == 8 for g in run["generations"])


@pytest.fixture(scope="module")
def shakespeare(tmp_path_factory) -> Path:
    """tinyshakespeare: the first 90 % as train shards, the last 10 % as val shards."""
    out = tmp_path_factory.mktemp("shakespeare")
    src = str(SHARED_LM / "tinyshakespeare/input.txt")
    prepare_main(["text", src, "--out", str(out), "--split", "train", "--range", "0:0.9"])
    prepare_main(["text", src, "--out", str(out), "--split", "val", "--range", "0.9:1"])
    return out


@needs_shared
@pytest.mark.timeout(600)
def test_learns_tinyshakespeare_then_test_and_predict(tiny_yaml, shakespeare, tmp_path):
    """Val bits per byte from ≈8 (uniform over 258 tokens) to below 3.0 in a few CPU minutes."""
    # Calibrated on one-document windows (pack: false): validation scores 32 windows of the val text,
    # each from fresh state. Packed (training, and validation streaming the long val text with its
    # state carried over 4K tokens, 32x the 128 trained on) it measured 3.02 bpb after 300 steps.
    data = {"train_shards": shakespeare, "val_shards": shakespeare, "test_shards": f"{shakespeare}/val-000000.tar",
            "seq_len": 128, "batch_size": 16, "samples_per_epoch": 16 * 300, "max_eval_windows": 32, "pack": False}
    model = {"backbone.dim": 64, "window": 32, "fast_weight.chunk": 32, "fast_weight.low_rank": 16, "lr": 5e-3,
             "warmup_steps": 20, "min_lr_ratio": 0.1, "position_buckets": 8}
    data = [f"--data.init_args.{k}={v}" for k, v in data.items()]
    model = [f"--model.init_args.{k}={v}" for k, v in model.items()]
    args = tiny_args(tiny_yaml, *data, *model, "--trainer.max_steps=300", "--trainer.limit_val_batches=null",
                     f"--trainer.default_root_dir={tmp_path}")
    cli = cli_main(args, run=False)
    before = cli.trainer.validate(cli.model, datamodule=cli.datamodule)[0]["val/bpb"]
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    after = float(cli.trainer.callback_metrics["val/bpb"])
    print(f"tinyshakespeare val bpb: {before:.3f} -> {after:.3f} in 300 steps")
    assert 7.5 < before < 8.5 and after < 3.0
    last = Path(cli.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    tested = cli_main(["test", *args, "--ckpt_path", str(last)])
    metrics = json.loads((Path(tested.trainer.log_dir) / "test_metrics.json").read_text())
    positions = json.loads((Path(tested.trainer.log_dir) / "loss_by_position.json").read_text())
    assert metrics["test/bpb"] < 3.0
    assert positions["loss"][-1] < positions["loss"][0]  # context helps: later positions are easier
    (tmp_path / "prompts.txt").write_text("ROMEO:\n")
    predicted = cli_main(["predict", *args, "--ckpt_path", str(last), "--data.init_args.prompts=null",
                          f"--data.init_args.prompts_file={tmp_path / 'prompts.txt'}"])
    (record,) = (json.loads(x) for x in (Path(predicted.trainer.log_dir) / "predictions/generations-rank0.jsonl")
                 .read_text().splitlines())
    assert record["prompt"] == "ROMEO:" and len(record["tokens"]) == 8


@needs_shared
@pytest.mark.timeout(180)
def test_gpt2_bpe_on_pretokenized_alice(tiny_yaml, tmp_path):
    gpt2 = SHARED_LM / "gpt2_tiktoken/gpt2.tiktoken"
    src = str(SHARED_LM / "gutenberg_alice/en-alice.txt")
    for split, fraction in (("train", "0:0.9"), ("test", "0.9:1")):
        prepare_main(["text", src, "--out", str(tmp_path / "alice"), "--split", split, "--range", fraction,
                      "--strip-gutenberg", "--tokenizer", str(gpt2)])
    shards = tmp_path / "alice"
    run = fit_test_predict(tiny_args(
        tiny_yaml, f"--data.init_args.tokenizer={gpt2}", "--model.init_args.vocab_size=50304",
        f"--data.init_args.train_shards={shards}", f"--data.init_args.val_shards={shards}/test-000000.tar",
        f"--data.init_args.test_shards={shards}/test-000000.tar", f"--trainer.default_root_dir={tmp_path}"))
    # ≈ log(50304) nats per token after two steps; bpb over ≈4 bytes per GPT-2 token
    assert run["metrics"]["test/loss"] == pytest.approx(math.log(50304), rel=0.1)
    assert 1.5 < run["metrics"]["test/bpb"] < 5.0
    assert all(len(g["tokens"]) == 8 for g in run["generations"])


def test_vocab_smaller_than_tokenizer_is_a_clear_error(tiny_yaml):
    cli = cli_main(tiny_args(tiny_yaml, "--model.init_args.vocab_size=100"), run=False)
    with pytest.raises(ValueError, match="vocab_size=258"):  # before any compute
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)


@pytest.mark.timeout(180)
def test_760m_config_runs_one_step_at_reduced_width(tmp_path, tiny_yaml):
    config = REPO_ROOT / "configs/scale/lm_760m.yaml"
    args = config_args(config, tmp_path) + [
        "--config", str(tiny_yaml), "--trainer.max_steps=1", "--trainer.precision=bf16-mixed",
        f"--trainer.default_root_dir={tmp_path}", "--data.init_args.num_workers=0",
    ]
    cli = cli_main(["fit", *args])
    assert cli.trainer.global_step == 1 and cli.model.hparams.activation_checkpointing
    assert cli.model.model.blocks[0].mixer.lact.branch.use_muon
    assert cli.model.hparams.fast_weight == {**FastWeightConfig(chunk=16, heads=2, inter_multi=1.0, use_momentum=True,
                                             use_muon=True, w_init="low_rank", low_rank=8).to_dict()}


def test_token_loss_metric_and_curve(tmp_path):
    metric = TokenLoss(num_buckets=2)
    nll = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    mask = torch.tensor([[True, True, True, False]])
    metric.update(nll, mask, mask.long() * 2)
    out = metric.compute()
    assert out["loss"] == pytest.approx(2.0) and out["bpb"] == pytest.approx(6 / (math.log(2) * 6))
    assert out["loss_by_position"].tolist() == [1.5, 3.0]
    figure = loss_by_position_figure([0, 2], out["loss_by_position"].tolist())
    (line,) = figure.axes[0].lines
    assert line.get_xdata().tolist() == [0, 2] and line.get_ydata().tolist() == [1.5, 3.0]
    writer = SummaryWriter(str(tmp_path))
    writer.add_figure("test/loss_by_position", figure, global_step=3)
    writer.close()
    (image,) = EventAccumulator(str(tmp_path)).Reload().Images("test/loss_by_position")
    assert image.step == 3 and (image.width, image.height) == (480, 300)


def test_generate_delegates_to_the_model():
    torch.manual_seed(0)
    task = LMTask(backbone=BackboneConfig(dim=32, depth=1, heads=2, mlp_ratio=None, rope_theta=1e6), window=8,
                  fast_weight=FastWeightConfig(chunk=8, heads=2, use_momentum=True, w_init="low_rank", low_rank=4))
    prompt = torch.randint(0, 258, (1, 5))
    out = task.generate(prompt, 12)
    assert out.shape == (1, 12) and torch.equal(out, task.model.generate(prompt, 12, use_cache=False))
    names = task.fast_weight_parameter_names()
    lact = "model.blocks.0.mixer.lact."
    assert {lact + "branch.w0_left", lact + "lr_proj.weight", lact + "momentum_proj.weight", lact + "gate.proj.weight"} <= names
    assert all(n.startswith(lact) for n in names) and "model.blocks.0.mixer.qkv.weight" not in names
    assert {g["name"] for g in task.parameter_groups()} >= {"fast_decay", "decay", "no_decay"}


def _last_checkpoint(root: Path, version: int) -> Path:
    return root / "lightning_logs" / f"version_{version}" / "checkpoints" / "last.ckpt"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fsdp2_two_processes_fit_and_resume(tiny_yaml, tmp_path):
    """The LM blocks sharded with FSDP2 over 2 processes; resuming the distributed checkpoint
    continues its step, optimizer and schedule (DDP plumbing: tests/test_cli.py's toy runs)."""
    args = [*tiny_args(tiny_yaml), "--config", str(REPO_ROOT / "configs/trainer/fsdp2_cpu.yaml"),
            f"--trainer.default_root_dir={tmp_path}"]
    run_main("fit", *args, timeout=240)
    last = _last_checkpoint(tmp_path, 0)
    assert last.is_dir()
    before = shutil.copytree(last, tmp_path / "before.ckpt")  # the resumed fit rewrites last.ckpt in place
    # the schedule of the first run (a resumed fit would otherwise stretch it to its own max_steps)
    run_main("fit", *args, "--trainer.max_steps=3", "--model.init_args.max_steps_for_schedule=2", "--seed_everything=1",
             "--ckpt_path", str(last), timeout=240)
    assert_resumed_one_step(load_checkpoint(before), load_checkpoint(last))


def test_token_loss_baselines_have_known_answers():
    """Uniform: tokens · ln V nats over the bytes, i.e. log2(V) · tokens / bytes bits per byte;
    unigram: the summed NLL it is given, over the same bytes."""
    metric = TokenLoss(num_buckets=2, vocab_size=258)
    nll = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    mask = torch.tensor([[True, True, True, False]])
    label_bytes = torch.tensor([[1, 2, 1, 0]])
    metric.update(nll, mask, label_bytes, unigram_nll=torch.tensor([[0.5, 0.5, 1.0, 0.0]]))
    out = metric.compute()
    assert out["uniform_bpb"].item() == pytest.approx(math.log2(258) * 3 / 4, rel=1e-12)
    assert out["unigram_bpb"].item() == pytest.approx(2.0 / (math.log(2) * 4), rel=1e-12)
    assert "uniform_bpb" not in TokenLoss(num_buckets=2).compute()  # no vocabulary given: no uniform baseline


def tiny_lm(vocab_size: int = 4) -> LMTask:
    return LMTask(vocab_size=vocab_size, backbone=BackboneConfig(dim=16, depth=1, heads=2, mlp_ratio=None),
                  window=8, fast_weight=FastWeightConfig(chunk=8, heads=2))


def test_unigram_counts_training_labels_and_scores_add_one_smoothed():
    task = tiny_lm(vocab_size=4)
    task.count_labels(torch.tensor([[0, 0, 1, -100], [0, 2, -100, -100]]))  # IGNORE_INDEX is not counted
    task.count_labels(torch.tensor([[0, 1]]))
    assert task.unigram_counts.tolist() == [4, 2, 1, 0]
    # add-one: p = (5, 3, 2, 1) / 11
    nll = task.unigram_nll(torch.tensor([[0, 3, -100]]))
    torch.testing.assert_close(nll, torch.tensor([[math.log(11 / 5), math.log(11), 0.0]], dtype=torch.float64))
    # saved with the model; a checkpoint from before the buffer loads strictly, with no counts
    state = task.state_dict()
    assert state["unigram_counts"].tolist() == [4, 2, 1, 0]
    old = {"state_dict": {k: v for k, v in state.items() if k != "unigram_counts"}}
    fresh = tiny_lm(vocab_size=4)
    fresh.unigram_counts += 7
    fresh.on_load_checkpoint(old)
    fresh.load_state_dict(old["state_dict"], strict=True)
    assert fresh.unigram_counts.tolist() == [0, 0, 0, 0]  # unigram baseline = uniform then
    torch.testing.assert_close(fresh.unigram_nll(torch.tensor([[1]])), torch.tensor([[math.log(4)]], dtype=torch.float64))


def test_label_smoothing_in_the_training_loss_only():
    """ε spreads over the V tokens: loss = (1 − ε)·NLL(y) + ε·mean_v NLL(v); evaluation stays plain NLL."""
    torch.manual_seed(0)
    eps, task = 0.1, LMTask(vocab_size=6, backbone=BackboneConfig(dim=16, depth=1, heads=2, mlp_ratio=None),
                            window=8, fast_weight=FastWeightConfig(chunk=8, heads=2), label_smoothing=0.1)
    task.log = lambda *args, **kwargs: None  # no trainer to log to
    task.log_throughput = task.log
    batch = {"input_ids": torch.randint(0, 6, (2, 5)), "labels": torch.tensor([[1, 2, 3, 4, -100], [5, 0, 1, 2, 3]])}
    logp = torch.log_softmax(task(batch["input_ids"]).float(), -1)
    mask = batch["labels"] != -100
    nll = -logp.gather(-1, batch["labels"].clamp(min=0)[..., None])[..., 0]
    smoothed = ((1 - eps) * nll - eps * logp.mean(-1))[mask].mean()
    torch.testing.assert_close(task.training_step(batch, 0), smoothed)
    torch.testing.assert_close(task.token_nll(batch)[0][mask], nll[mask])
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\), got 1.0"):
        LMTask(vocab_size=6, label_smoothing=1.0)


@needs_shared
@pytest.mark.timeout(180)
def test_test_scores_every_byte_of_a_whole_book(tiny_yaml, tmp_path):
    """`test` streams a long document window after window (the cache carried over): a whole novel,
    172 KB, is scored, every UTF-8 byte of it a label once (byte tokenizer: tokens = bytes)."""
    src = str(SHARED_LM / "gutenberg_alice/en-alice.txt")
    prepare_main(["text", src, "--out", str(tmp_path / "alice"), "--split", "test", "--strip-gutenberg"])
    shard = tmp_path / "alice/test-000000.tar"
    (sample,) = read_samples(shard)
    size = len(sample["txt"])
    tested = cli_main(["test", *tiny_args(tiny_yaml, f"--data.init_args.test_shards={shard}",
                                          "--data.init_args.seq_len=4096", "--trainer.limit_test_batches=null",
                                          f"--trainer.default_root_dir={tmp_path}")])
    metrics = json.loads((Path(tested.trainer.log_dir) / "test_metrics.json").read_text())
    assert size > 150_000 and metrics["test/bytes"] == metrics["test/tokens"] == size
    assert metrics["test/baseline/uniform_bpb"] == pytest.approx(math.log2(258))
    assert 7.0 < metrics["test/bpb"] < 9.0  # an untrained model: ≈ log2(258)
