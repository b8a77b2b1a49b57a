"""What the official-checkpoint converters share: their error and the state-dict key check."""

from __future__ import annotations

from collections.abc import Callable

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
