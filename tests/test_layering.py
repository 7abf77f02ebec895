"""The four layers import only downward: sim ← models ← stages ← pipeline.

Every module of the project is parsed (not imported); its ``import`` statements and every string
literal of the form ``"pkg.module"`` or ``"pkg.module:attr"`` naming a project module (what
registries hand to ``importlib``) count as imports. A deliberate violation is shown to fail.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("sim", "models", "stages", "pipeline")
#: What each layer may not import.
FORBIDDEN = {
    "sim": {"models", "stages", "pipeline"},
    "models": {"stages", "pipeline"},
    "stages": {"pipeline"},
    "pipeline": set(),
}
DOTTED = re.compile(r"^(sim|models|stages|pipeline)(\.[A-Za-z_][A-Za-z0-9_]*)*(:[A-Za-z_]\w*)?$")


def imported_packages(source: str) -> set[tuple[int, str]]:
    """(line, top-level package) of every import and import-like string in ``source``."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {(node.lineno, alias.name.split(".")[0]) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if DOTTED.match(node.value) and ("." in node.value or ":" in node.value):
                found.add((node.lineno, node.value.split(".")[0].split(":")[0]))
    return found


def violations(root: Path) -> list[str]:
    """``path:line: layer imports package`` for every import against the layer order."""
    bad = []
    for layer in LAYERS:
        for path in sorted((root / layer).rglob("*.py")):
            for line, package in sorted(imported_packages(path.read_text())):
                if package in FORBIDDEN[layer]:
                    bad.append(f"{path.relative_to(root)}:{line}: {layer} imports {package}")
    return bad


def test_no_layer_imports_a_layer_above_it():
    assert violations(ROOT) == []


#: Inside the pipeline: sub-package -> the pipeline modules it may not import.
PIPELINE_FORBIDDEN = {
    "wire": ("pipeline.run", "pipeline.attach", "pipeline.replay", "pipeline.config"),
    "attach": ("pipeline.run", "pipeline.replay", "pipeline.config"),
    "run": ("pipeline.replay",),
}


def test_pipeline_sub_packages_import_only_downward():
    bad = []
    for sub, forbidden in PIPELINE_FORBIDDEN.items():
        for path in sorted((ROOT / "pipeline" / sub).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                bad += [f"{path.relative_to(ROOT)}:{node.lineno}: {name}" for name in names
                        if name.startswith(forbidden)]
    assert bad == []


@pytest.mark.parametrize("layer, line, package", [
    ("sim", "from models.metric import cso_map\n", "models"),
    ("sim", "import pipeline\n", "pipeline"),
    ("models", "import stages.messages\n", "stages"),
    ("stages", 'KINDS = {"x": "pipeline.attach.external:ExternalInput"}\n', "pipeline"),
    ("stages", 'importlib.import_module("pipeline.run.runner")\n', "pipeline"),
])
def test_a_deliberate_violation_is_caught(tmp_path, layer, line, package):
    for name in LAYERS:
        (tmp_path / name).mkdir()
    (tmp_path / layer / "bad.py").write_text(line)
    (tmp_path / "pipeline" / "fine.py").write_text("import sim, models, stages\n")
    assert violations(tmp_path) == [f"{layer}/bad.py:1: {layer} imports {package}"]


def test_the_metric_the_extractor_and_the_registry_import_without_torch():
    code = ("import sys, models, models.metric, models.protocol, models.registry, sim.geometry\n"
            "import models.extract\n"
            "print(sorted(m for m in ('torch', 'models.base') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"
