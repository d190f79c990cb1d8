"""The floors of the house (docs/ARCHITECTURE of the project): what each layer may import.

Every ``import`` of every module is read from its source (top-level and inside functions alike), so a
lazy import cannot hide a dependency. The floors:

* the math (``trie``, ``rewards``, ``losses``, ``objective``, ``metrics``) and the settings (``config``,
  ``files``, ``threads``) import no model, plotting, widget, training loop or experiment;
* plotting (``viz``) imports nothing that trains; widgets import no training loop (the toy fit is
  passed in);
* nothing below ``flower_lite.experiments`` imports it (only the command line sits above it);
* the command line builds its parser without torch.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "flower_lite"
MATH = ("trie", "rewards", "losses", "objective", "metrics", "config", "files", "threads")
MODEL_SIDE = ("models", "prompts", "rollout", "decoding", "train", "toy", "tabular", "sasrec", "trunk", "tree_attention",
              "viz", "widgets", "experiments", "cli")
HEAVY = ("transformers", "peft", "accelerate", "plotly", "ipywidgets", "IPython")
TRAINS = ("toy", "tabular", "train", "rollout", "losses", "objective", "sasrec", "trunk", "tree_attention", "experiments")


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (``from . import x`` gives ``package.x``)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return out


MODULES = {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def touches(imported: set[str], names: tuple[str, ...], external: tuple[str, ...] = ()) -> list[str]:
    inside = [m for m in imported if any(m == f"flower_lite.{n}" or m.startswith(f"flower_lite.{n}.") for n in names)]
    outside = [m for m in imported if m.split(".")[0] in external]
    return sorted(inside + outside)


def test_the_reader_sees_every_module_and_its_imports():
    assert {"flower_lite.trie", "flower_lite.objective", "flower_lite.experiments.rq2.setup"} <= set(MODULES)
    assert "flower_lite.losses" in MODULES["flower_lite.objective"]
    assert "flower_lite.trie" in MODULES["flower_lite.rewards"]  # relative imports are resolved


@pytest.mark.parametrize("name", MATH)
def test_the_math_imports_no_model_plot_widget_or_trainer(name):
    assert touches(MODULES[f"flower_lite.{name}"], MODEL_SIDE, HEAVY) == []


def test_plotting_imports_nothing_that_trains():
    assert touches(MODULES["flower_lite.viz"], TRAINS + ("widgets", "models", "cli"), ("transformers", "peft", "accelerate")) == []


def test_widgets_import_no_trainer():
    assert touches(MODULES["flower_lite.widgets"], TRAINS + ("models", "decoding", "cli"), ("transformers", "peft", "accelerate")) == []


def test_nothing_below_the_experiments_imports_them():
    top = ("flower_lite.cli", "flower_lite.__main__")  # the command line and its `python -m` entry
    below = {m: i for m, i in MODULES.items() if not m.startswith("flower_lite.experiments") and m not in top}
    offenders = {m: touches(i, ("experiments", "cli")) for m, i in below.items()}
    assert {m: v for m, v in offenders.items() if v} == {}


def test_the_layer_check_fails_on_a_forbidden_import(tmp_path):
    bad = tmp_path / "flower_lite" / "metrics.py"
    bad.parent.mkdir()
    bad.write_text("def f():\n    from .models import load_smollm2\n    import plotly\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "flower_lite"
    try:
        assert touches(imports_of(bad), MODEL_SIDE, HEAVY) == ["flower_lite.models", "flower_lite.models.load_smollm2", "plotly"]
    finally:
        PACKAGE = saved


def test_the_command_line_parser_needs_no_torch():
    code = ("import sys, flower_lite.cli as c; c.build_parser().parse_args(['fit', '--loss', 'db']); "
            "bad = [m for m in ('torch', 'transformers', 'numpy') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
