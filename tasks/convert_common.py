"""What the official-checkpoint converters share: their error and the state-dict key check."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

StateDict = dict[str, torch.Tensor]


class ConversionError(ValueError):
    """A source the converter refuses (the message is one line, or a line and a key list)."""


def check_keys(
    found: StateDict,
    expected: dict[str, torch.Size],
    unknown: list[str],
    what: str,
    official_name: Callable[[str], str],
) -> None:
    """Refuse missing / unexpected / mis-shaped keys, listed under their official names.

    Args:
        found: the converted tensors under the project's names.
        expected: the project model's parameter shapes.
        unknown: official names that map to no project parameter.
        what: the source, for the message.
        official_name: project name -> official name.
    """
    missing = sorted(official_name(k) for k in set(expected) - set(found))
    unexpected = sorted(unknown + [official_name(k) for k in found if k not in expected])
    shapes = sorted(f"{official_name(k)}: {tuple(v.shape)} (expected {tuple(expected[k])})"
                    for k, v in found.items() if k in expected and v.shape != expected[k])  # fmt: skip
    problems = [f"missing {missing}"] * bool(missing) + [f"unexpected {unexpected}"] * bool(unexpected)
    problems += [f"wrong shapes {shapes}"] * bool(shapes)
    if problems:
        raise ConversionError(f"{what} does not match the model: " + "; ".join(problems))


def cli_hparams(task: Any) -> dict[str, Any]:
    """A task's hyperparameters as ``LightningCLI`` saves them (the class path and its instantiator
    beside the arguments), so ``main.py test --ckpt_path`` rebuilds the model from them and
    ``Task.load_from_checkpoint`` works as for a checkpoint trained here."""
    cls = type(task)
    return {"_instantiator": "lightning.pytorch.cli.instantiate_module",
            "_class_path": f"{cls.__module__}.{cls.__qualname__}", **dict(task.hparams)}  # fmt: skip
