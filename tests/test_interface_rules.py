"""The one-model-interface rules, measured over ``lact_app/``, ``tasks/``, ``datamodules/`` by reading
the source (they stay in force for every later change):

- each fast-weight and backbone knob has a default in at most 2 places outside the functional op
  (``lact_app/ops`` takes values, not configs): its field in ``FastWeightConfig`` /
  ``BackboneConfig`` and at most one other;
- no project class is built with more than 3 positional arguments;
- no call passes more than 5 positional arguments;
- ``lact_app`` imports neither ``tasks`` nor ``datamodules``; those two do not import each other.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PACKAGES = ("lact_app", "tasks", "datamodules")
FAST_WEIGHT_KNOBS = ("chunk", "heads", "inter_multi", "base_lr", "use_momentum", "use_muon", "w_init", "low_rank",
                     "init_gain", "weight_norm", "recompute")  # fmt: skip
BACKBONE_KNOBS = ("dim", "depth", "heads", "mlp_ratio", "rope_theta")
KNOBS = FAST_WEIGHT_KNOBS + BACKBONE_KNOBS


def sources(*packages: str) -> dict[Path, ast.Module]:
    return {p: ast.parse(p.read_text(), str(p)) for pkg in packages for p in sorted((REPO_ROOT / pkg).rglob("*.py"))}


TREES = sources(*PACKAGES)


def where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(REPO_ROOT)}:{node.lineno}"


def knob_defaults(path: Path, tree: ast.Module) -> list[tuple[str, str]]:
    """(knob, place) of every parameter or dataclass field named like a knob that has a default."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            positional = args.posonlyargs + args.args
            pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
            pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
            found += [(a.arg, where(path, a)) for a, _ in pairs if a.arg in KNOBS]
        elif isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
                    if stmt.target.id in KNOBS:
                        found.append((stmt.target.id, where(path, stmt)))
    return found


def test_each_knob_has_a_default_in_at_most_two_places():
    defaults = [d for p, t in TREES.items() if "ops" not in p.relative_to(REPO_ROOT).parts for d in knob_defaults(p, t)]
    counts = Counter(knob for knob, _ in defaults)
    too_many = {k: [w for n, w in defaults if n == k] for k, c in counts.items() if c > 2}
    assert not too_many, f"knob defaults declared in more than 2 places: {too_many}"
    assert set(counts) == set(KNOBS)  # every knob is declared (in its config)


def project_classes() -> set[str]:
    every = sources(*PACKAGES, "tests")
    return {n.name for t in every.values() for n in ast.walk(t) if isinstance(n, ast.ClassDef)}


def positional_count(call: ast.Call) -> int:
    return sum(not isinstance(a, ast.Starred) for a in call.args)


def callee(call: ast.Call) -> str:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def test_no_class_built_with_more_than_three_and_no_call_with_more_than_five_positional_arguments():
    classes = project_classes()
    calls = [(p, n) for p, t in TREES.items() for n in ast.walk(t) if isinstance(n, ast.Call)]
    wide_classes = [f"{where(p, c)} {callee(c)}" for p, c in calls if callee(c) in classes and positional_count(c) > 3]
    wide_calls = [f"{where(p, c)} {callee(c)}" for p, c in calls if positional_count(c) > 5]
    assert not wide_classes, f"project classes built with > 3 positional arguments: {wide_classes}"
    assert not wide_calls, f"calls with > 5 positional arguments: {wide_calls}"


@pytest.mark.parametrize("package, forbidden", [("lact_app", ("tasks", "datamodules")), ("tasks", ("datamodules",)),
                                                ("datamodules", ("tasks",))])  # fmt: skip
def test_layering(package, forbidden):
    imports = []
    for path, tree in sources(package).items():
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            imports += [f"{where(path, node)} {n}" for n in names if n.split(".")[0] in forbidden]
    assert not imports, f"{package} imports {forbidden}: {imports}"
