"""The house rules on imports, read from the source: Ray is known to pipeline/raydata.py alone
(stages, manifests, eval and the selection import none of it), stages never import the pipeline, and manifests
import neither stages nor pipeline."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"pipeline", "stages", "manifests", "eval", "optidel"}


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in the file, as top-level names: `ray`, and
    `stages`, `pipeline`, ... for optidel's own subpackages, relative imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {_own(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level >= 2:  # from ..stages import x / from .. import stages
                found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            elif node.level == 1:
                found.add(path.parent.name)
            else:
                found.add(_own(node.module))
    return found


def _own(module: str) -> str:
    parts = module.split(".")
    return parts[1] if parts[0] == "optidel" and len(parts) > 1 and parts[1] in PACKAGES else parts[0]


def _modules(folder: str) -> list[Path]:
    return sorted((REPO / folder).glob("*.py"))


@pytest.mark.parametrize("folder", ["stages", "manifests", "eval", "optidel", "pipeline/selection"])
def test_no_ray_outside_the_pipeline(folder):
    assert _modules(folder)
    assert [p.name for p in _modules(folder) if "ray" in _imports(p)] == []


def test_raydata_is_the_pipelines_only_module_that_imports_ray():
    assert [p.name for p in _modules("pipeline") if "ray" in _imports(p)] == ["raydata.py"]


@pytest.mark.parametrize(
    ("folder", "forbidden"), [("stages", {"pipeline", "eval"}), ("manifests", {"stages", "pipeline", "eval"})]
)
def test_imports_run_one_way(folder, forbidden):
    assert {p.name: sorted(_imports(p) & forbidden) for p in _modules(folder) if _imports(p) & forbidden} == {}


def test_the_checker_sees_imports(tmp_path):
    """The checks above would pass on a checker that finds nothing: make sure it finds these."""
    module = tmp_path / "stages" / "m.py"
    module.parent.mkdir()
    module.write_text("import ray.data\nfrom ..pipeline import raydata\nfrom . import columns\n\ndef f():\n    from optidel.eval import harness\n")
    assert _imports(module) == {"ray", "pipeline", "stages", "eval"}
