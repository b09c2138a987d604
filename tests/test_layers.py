"""Imports point down (docs/architecture.md): lower layers never import the trainer, and only
``training/arguments.py`` sees the argparse namespace."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "megatron_rcm"
BELOW_TRAINING = ["convert", "models", "diffusion", "losses", "data", "parallel", "kernels", "encoders", "planning",
                  "evaluation", "loading.py", "save_folder.py", "generation.py", "atomic_output.py"]


def _modules(*names):
    for name in names:
        path = PACKAGE / name
        yield from sorted(path.rglob("*.py")) if path.is_dir() else [path]


def _imported(path):
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    package = ["megatron_rcm", *path.relative_to(PACKAGE).parent.parts]
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names += [module] + [f"{module}.{alias.name}" for alias in node.names]
    return names


@pytest.mark.parametrize("path", list(_modules(*BELOW_TRAINING)), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_lower_layers_do_not_import_training(path):
    assert not [n for n in _imported(path) if n.startswith("megatron_rcm.training")]


def test_the_import_checker_sees_relative_and_absolute_imports():
    probe = PACKAGE / "convert" / "megatron_dist.py"
    names = _imported(probe)
    assert "megatron_rcm.save_folder.latest_checkpoint_path" in names  # from ..save_folder import ...
    assert "torch" in names


@pytest.mark.parametrize("path", [p for p in _modules("training") if p.name != "arguments.py"],
                         ids=lambda p: p.name)
def test_only_arguments_sees_the_command_line(path):
    tree = ast.parse(path.read_text())
    assert "Namespace" not in {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert "argparse.Namespace" not in _imported(path)
    params = [a.arg for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.Lambda))
              for a in node.args.args + node.args.kwonlyargs]
    assert "args" not in params
