"""The shape of the code (docs/design.md): imports run one way, and the light layers stay light.

Each package module's gradscope imports (at the top or inside functions) are read from its
source and checked against the layers it may use.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gradscope"

#: Plain data and pure functions that any layer may import.
SHARED = {"gradscope", "gradscope.errors", "gradscope.options", "gradscope.report"}
SHARED |= {"gradscope.theory", "gradscope.taxonomy", "gradscope.baseline", "gradscope.compare"}
SHARED |= {"gradscope.precision", "gradscope.hub"}
#: What each layer may import besides SHARED and its own package; every module is in a layer.
ALLOWED = {
    "gradscope": {"gradscope.api", "gradscope.monitor"},
    "gradscope.monitor": {"gradscope.api"},
    "gradscope.integrations": {"gradscope.monitor"},
    "gradscope.errors": set(),
    "gradscope.options": set(),
    "gradscope.config": set(),
    "gradscope.baseline": set(),
    "gradscope.compare": set(),
    # a report shows itself as HTML (Report.to_html, Jupyter), drawn by render: imported there
    "gradscope.report": {"gradscope.render"},
    "gradscope.theory": set(),
    "gradscope.taxonomy": set(),
    "gradscope.numerics": set(),
    "gradscope.precision": set(),
    "gradscope.hub": set(),
    # the traced pass: where NaN or Inf first appear (measurement, on the probe's loss)
    "gradscope.origin": {"gradscope.probe"},
    "gradscope.krylov": set(),
    "gradscope.progress": set(),
    "gradscope.dataflow": set(),
    "gradscope.coverage": set(),
    "gradscope.loading": {"gradscope.numerics"},
    "gradscope.probe": {"gradscope.numerics", "gradscope.dataflow"},
    "gradscope.recurrent": {
        "gradscope.progress",
        "gradscope.numerics",
        "gradscope.krylov",
        "gradscope.probe",
        "gradscope.loading",
        "gradscope.dataflow",
    },
    "gradscope.depth": {
        "gradscope.progress",
        "gradscope.numerics",
        "gradscope.probe",
        "gradscope.dataflow",
    },
    "gradscope.sequence": {"gradscope.progress", "gradscope.numerics", "gradscope.probe"},
    "gradscope.whatif": {
        "gradscope.progress",
        "gradscope.numerics",
        "gradscope.probe",
        "gradscope.recurrent",
        "gradscope.depth",
        "gradscope.diagnosis",
    },
    "gradscope.diagnosis": set(),
    "gradscope.fixes": {"gradscope.diagnosis"},
    "gradscope.render": set(),
    "gradscope.views": {
        "gradscope.numerics",
        "gradscope.origin",
        "gradscope.loading",
        "gradscope.probe",
        "gradscope.recurrent",
        "gradscope.depth",
        "gradscope.sequence",
    },
    "gradscope.pipeline": {
        "gradscope.progress",
        "gradscope.origin",
        "gradscope.views",
        "gradscope.whatif",
        "gradscope.coverage",
        "gradscope.diagnosis",
        "gradscope.fixes",
        "gradscope.loading",
        "gradscope.probe",
    },
    "gradscope.api": {"gradscope.pipeline"},
    "gradscope.pytest_plugin": {"gradscope.api"},
    "gradscope.demo": {"gradscope.api", "gradscope.pipeline"},
    "gradscope.cli": {
        "gradscope.api",
        "gradscope.render",
        "gradscope.demo",
        "gradscope.config",
        "gradscope.baseline",
    },
    "gradscope.__main__": {"gradscope.cli"},
}
#: Layers that must not import torch, so that they load instantly and test without it.
TORCH_FREE = [
    "gradscope.cli",
    "gradscope.api",
    "gradscope.pytest_plugin",
    "gradscope.options",
    "gradscope.config",
    "gradscope.baseline",
    "gradscope.report",
    "gradscope.precision",
    "gradscope.hub",
    "gradscope.diagnosis",
    "gradscope.fixes",
    "gradscope.render.text",
    "gradscope.render.json_format",
    "gradscope.render.chart",
    "gradscope.render.demo",
    "gradscope.render.markdown",
    "gradscope.render.github",
    "gradscope.render.junit",
    "gradscope.render.html",
    "gradscope.render.svg",
    "gradscope.render.delivery",
    "gradscope.render.parts",
    "gradscope.render.compare",
    "gradscope.render.numerics",
    "gradscope.compare",
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def gradscope_imports(path: Path) -> set[str]:
    """Every gradscope module ``path`` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found |= {name for name in names if name.split(".")[0] == "gradscope"}
    return found


def layer(module: str) -> str:
    """The layer a module belongs to: its package below gradscope, or itself."""
    parts = module.split(".")
    return ".".join(parts[:2])


def allowed(importer: str, imported: str) -> bool:
    own = layer(importer)
    if layer(imported) == own or imported in SHARED or layer(imported) in SHARED:
        return True
    return layer(imported) in ALLOWED[own]


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_belongs_to_a_layer():
    layers = {layer(module_name(path)) for path in MODULES}
    assert layers == set(ALLOWED)


@pytest.mark.parametrize("path", MODULES, ids=lambda path: module_name(path))
def test_imports_run_one_way(path):
    importer = module_name(path)
    wrong = sorted(name for name in gradscope_imports(path) if not allowed(importer, name))
    assert not wrong, f"{importer} imports {wrong}"


def test_measurement_never_imports_diagnosis_or_rendering():
    for path in MODULES:
        if layer(module_name(path)) in ("gradscope.recurrent", "gradscope.depth"):
            imported = {layer(name) for name in gradscope_imports(path)}
            assert not imported & {"gradscope.diagnosis", "gradscope.fixes", "gradscope.render"}


def test_light_layers_import_no_torch():
    imports = "; ".join(f"import {name}" for name in TORCH_FREE)
    code = f"import sys; {imports}; sys.exit('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr or "torch was imported"
