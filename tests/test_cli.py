"""The command line: help, building from configs, every config under configs/, fit → test, 2-process runs.

Config discovery (``test_every_task_config_builds``): every ``configs/**/*.yaml`` with a top-level
``model:`` key is built with ``cli_main([...], run=False)``; trainer-only fragments under
``configs/trainer/`` are checked by stacking them on the toy config instead. Task engineers add
nothing here. Two optional comment lines at the top of a config steer the test:

- ``# test-base: configs/lm.yaml`` — stack this YAML on that one (for scale fragments that only
  change widths/trainer and have no ``model:`` key of their own; such fragments are picked up too).
- ``# test-overrides: --model.init_args.backbone.dim=32 --model.init_args.backbone.depth=2`` — extra CLI
  arguments (shell-quoted) that shrink the model so it builds in seconds on a CPU.

Configs under ``configs/scale/`` additionally get a CPU trainer (``CPU_TRAINER``): they are meant
for GPUs, bf16 and sharding.

The 2-process runs launch ``python main.py`` subprocesses from the repository root: Lightning's
DDP relaunches the current command, which inside pytest would be pytest.
"""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lact_app.cli import cli_main, model_arguments
from tests.conftest import REPO_ROOT
from tests.toy import ToyDataModule, ToyTask, write_toy_config

CPU_TRAINER = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32-true",
               "--trainer.strategy=auto"]


def directives(path: Path) -> dict[str, str]:
    """``# test-<name>: value`` comment lines at the top of a YAML, as {name: value}."""
    found = {}
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        name, sep, value = line[1:].strip().partition(":")
        if sep and name.startswith("test-"):
            found[name[len("test-"):]] = value.strip()
    return found


def has_model_key(path: Path) -> bool:
    return any(line.startswith("model:") for line in path.read_text().splitlines())


def task_configs() -> list[Path]:
    configs = sorted((REPO_ROOT / "configs").rglob("*.yaml"))
    return [p for p in configs if "trainer" not in p.relative_to(REPO_ROOT / "configs").parts[:1]
            and (has_model_key(p) or "base" in directives(p))]


def config_args(path: Path, tmp_path: Path) -> list[str]:
    """The ``cli_main`` arguments that build ``path`` on this CPU (see the module docstring)."""
    steer = directives(path)
    args = ["--config", str(REPO_ROOT / steer["base"])] if "base" in steer else []
    args += ["--config", str(path), f"--trainer.default_root_dir={tmp_path}"]
    if "scale" in path.relative_to(REPO_ROOT / "configs").parts:
        args += CPU_TRAINER
    return args + shlex.split(steer.get("overrides", ""))


def run_main(*args: str, timeout: int = 120, check: bool = True) -> subprocess.CompletedProcess:
    """Runs ``python main.py *args`` from the repository root; with ``check`` it must succeed."""
    env = {**os.environ, "TORCHDYNAMO_DISABLE": "1"}
    result = subprocess.run([sys.executable, "main.py", *args], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert not check or result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


@pytest.fixture
def toy_yaml(tmp_path, toy_cache) -> Path:
    return write_toy_config(tmp_path / "toy.yaml", toy_cache, tmp_path / "logs")


@pytest.mark.timeout(60)
def test_help_lists_subcommands():
    out = run_main("--help").stdout
    assert all(cmd in out for cmd in ("fit", "validate", "test", "predict"))


# An LM option that the model's constructor rejects (ValueError), and the words of its message.
BAD_LM_OPTION = ["--model.init_args.fast_weight.chunk", "0"]
BAD_LM_MESSAGE = "fast_weight.chunk must be >= 1 (or null), got 0"


@pytest.mark.timeout(60)
def test_a_rejected_config_value_is_one_short_error():
    """No traceback through jsonargparse and Lightning: exit code 2 and a message naming the problem."""
    result = run_main("fit", "--config", "configs/lm.yaml", *BAD_LM_OPTION, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output and len(output.splitlines()) <= 12, output
    assert "error: invalid configuration: " in output and BAD_LM_MESSAGE in output, output


@pytest.mark.timeout(60)
def test_cli_builds_without_running(toy_yaml):
    cli = cli_main(["--config", str(toy_yaml)], run=False)
    assert isinstance(cli.model, ToyTask) and isinstance(cli.datamodule, ToyDataModule)
    assert cli.model.hparams.hidden == 8 and cli.trainer.max_steps == 4
    names = {type(c).__name__ for c in cli.trainer.callbacks}
    assert {"ModelCheckpoint", "LearningRateMonitor", "TestMetricsJSON"} <= names
    assert not cli.trainer.checkpoint_callback.auto_insert_metric_name


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fragment", sorted((REPO_ROOT / "configs" / "trainer").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_trainer_fragments_stack_on_a_task_config(fragment, toy_yaml):
    args = ["--config", str(toy_yaml), "--config", str(fragment)]
    if "gpu" in fragment.stem and not torch.cuda.is_available():
        args += CPU_TRAINER[:1] + ["--trainer.precision=bf16-mixed"]
    cli = cli_main(args, run=False)
    assert cli.trainer.max_steps == 4  # the task config's trainer keys survive the fragment


@pytest.mark.timeout(120)
@pytest.mark.parametrize("config", task_configs(), ids=lambda p: str(p.relative_to(REPO_ROOT / "configs")))
def test_every_task_config_builds(config, tmp_path):
    cli = cli_main(config_args(config, tmp_path), run=False)
    expected = expected_settings(config)
    assert f"{type(cli.model).__module__}.{type(cli.model).__name__}" == expected["model"]["class_path"]
    assert f"{type(cli.datamodule).__module__}.{type(cli.datamodule).__name__}" == expected["data"]["class_path"]
    hparams = dict(cli.model.hparams)
    for name, value in expected["model"].get("init_args", {}).items():  # every model setting reaches the model
        if isinstance(value, dict):
            assert {k: hparams[name][k] for k in value} == value, name
        else:
            assert hparams[name] == (tuple(value) if isinstance(value, list) and isinstance(hparams[name], tuple)
                                     else value), name
    if "max_steps" in expected.get("trainer", {}):
        assert cli.trainer.max_steps == expected["trainer"]["max_steps"]


def expected_settings(path: Path) -> dict:
    """The settings ``config_args(path)`` asks for: its YAMLs merged (right-most wins), then its
    ``--section.init_args.key=value`` overrides."""
    import yaml

    def merge(into: dict, update: dict) -> dict:
        for key, value in update.items():
            into[key] = merge(into.get(key, {}), value) if isinstance(value, dict) else value
        return into

    steer, settings = directives(path), {}
    for source in ([REPO_ROOT / steer["base"]] if "base" in steer else []) + [path]:
        merge(settings, yaml.safe_load(source.read_text()) or {})
    for option in shlex.split(steer.get("overrides", "")):
        keys, _, value = option[2:].partition("=")
        *parents, last = keys.split(".")
        node = settings
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = yaml.safe_load(value)
    return settings


@pytest.mark.timeout(120)
def test_fit_then_test_writes_metrics_json(toy_yaml, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["main.py"])  # LightningCLI warns about pytest's own argv
    fit = cli_main(["fit", "--config", str(toy_yaml)])
    assert fit.trainer.global_step == 4
    last = Path(fit.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    assert last.is_file()
    tested = cli_main(["test", "--config", str(toy_yaml), "--ckpt_path", str(last)])
    metrics = json.loads((Path(tested.trainer.log_dir) / "test_metrics.json").read_text())
    assert set(metrics) == {"test/loss"} and metrics["test/loss"] > 0
    # The checkpoint's hyperparameters rebuild the model, but explicit --model options still win.
    retested = cli_main(["test", "--config", str(toy_yaml), "--ckpt_path", str(last), "--model.init_args.lr", "0.5",
                         "--trainer.limit_test_batches=1"])
    assert retested.model.hparams.lr == 0.5 and tested.model.hparams.lr != 0.5


def test_model_arguments_picks_both_option_forms():
    args = ["test", "--config", "a.yaml", "--model.init_args.lr", "0.5", "--trainer.max_steps=3",
            "--model.init_args.fvd_detector=/x.pt", "--ckpt_path", "c.ckpt", "--model", "m.yaml"]
    assert model_arguments(args) == ["--model.init_args.lr", "0.5", "--model.init_args.fvd_detector=/x.pt",
                                     "--model", "m.yaml"]


def _version_dir(root: Path, version: int) -> Path:
    return root / "lightning_logs" / f"version_{version}"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ddp_two_processes_fit_and_test(toy_yaml, tmp_path, monkeypatch):
    ddp = str(REPO_ROOT / "configs/trainer/ddp_cpu.yaml")
    run_main("fit", "--config", str(toy_yaml), "--config", ddp)
    last = _version_dir(tmp_path / "logs", 0) / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 4
    run_main("test", "--config", str(toy_yaml), "--config", ddp, "--ckpt_path", str(last))
    metrics = json.loads((_version_dir(tmp_path / "logs", 1) / "test_metrics.json").read_text())
    # each rank tests its own half of the test split; the synced loss is the whole split's
    monkeypatch.setattr(sys, "argv", ["main.py"])
    single = cli_main(["test", "--config", str(toy_yaml), "--ckpt_path", str(last)])
    assert metrics["test/loss"] == pytest.approx(single.trainer.callback_metrics["test/loss"].item(), rel=1e-5)


@pytest.mark.timeout(60)
def test_data_to_model_links(toy_yaml, monkeypatch):
    """A link feeds a datamodule value to the model; a target the model lacks is ignored."""
    import lact_app.cli as cli_module

    monkeypatch.setattr(cli_module, "DATA_TO_MODEL_LINKS", [
        ("data", "model.init_args.hidden", lambda data: data.samples_per_shard),
        ("data", "model.init_args.vocab_size", lambda data: getattr(data, "vocab_size", None)),
    ])
    cli = cli_main(["--config", str(toy_yaml), "--data.init_args.samples_per_shard=5"], run=False)
    assert cli.model.hparams.hidden == 5
