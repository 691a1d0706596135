"""The package's layers (docs/design.md#layers): model <- shared (data, optim, cli, hub) <- jobs (pretraining,
evaluation, visualization, study) <- scripts. A module may import from its own layer or a lower one; two job packages
never import each other, so each job can be read (and changed) alone."""

import ast
from pathlib import Path

import pytest


PACKAGE_DIR = Path(__file__).resolve().parents[1] / "caev2_hf"
MODEL_MODULES = {"__init__", "configuration_caev2", "modeling_caev2", "modeling_caev2_backbone"}
SHARED = {"data", "optim", "cli", "hub", "plots"}
JOBS = {"pretraining", "evaluation", "visualization", "visualize", "study"}


def component(module: str) -> str:
    """`caev2_hf.pretraining.step` -> `pretraining`; `caev2_hf.modeling_caev2` -> `modeling_caev2`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def rank(name: str) -> int:
    if name in MODEL_MODULES:
        return 0
    if name in SHARED:
        return 1
    if name in JOBS:
        return 2
    raise AssertionError(f"caev2_hf.{name} belongs to no layer: add it to tests/test_layers.py and docs/design.md")


def module_name(path: Path, package_dir: Path = PACKAGE_DIR) -> str:
    relative = path.relative_to(package_dir.parent).with_suffix("")
    parts = list(relative.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, package_dir: Path = PACKAGE_DIR) -> list[str]:
    """Absolute names of the caev2_hf modules that `path` imports, relative imports resolved."""
    module = module_name(path, package_dir)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from . import modeling_caev2` names a module, not an attribute
            names += [f"{target}.{alias.name}" for alias in node.names] if not node.module else [target]
    return [name for name in names if name == "caev2_hf" or name.startswith("caev2_hf.")]


def layer_violations(path: Path, package_dir: Path = PACKAGE_DIR) -> list[str]:
    source = component(module_name(path, package_dir))
    problems = []
    for target_module in imported_modules(path, package_dir):
        target = component(target_module)
        if rank(target) > rank(source):
            problems.append(f"{path.name} ({source}) imports {target_module}, a higher layer")
        elif rank(source) == rank(target) == 2 and source != target:
            problems.append(f"{path.name}: job {source} imports job {target}; move the shared part down")
    return problems


SOURCES = sorted(PACKAGE_DIR.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(PACKAGE_DIR)))
def test_imports_point_to_the_same_layer_or_below(path: Path):
    assert layer_violations(path) == []


def test_model_files_import_only_each_other():
    """The remote-code files are copied alone next to the weights: no import of the rest of the package."""
    for name in ("configuration_caev2", "modeling_caev2"):
        imports = imported_modules(PACKAGE_DIR / f"{name}.py")
        assert {component(module) for module in imports} <= MODEL_MODULES - {"__init__"}, (name, imports)


def test_the_check_reports_upward_and_sideways_imports(tmp_path: Path):
    package = tmp_path / "caev2_hf"
    (package / "data").mkdir(parents=True)
    (package / "evaluation").mkdir()
    upward = package / "data" / "bad.py"
    upward.write_text("from ..pretraining.step import PretrainingStep\nfrom .masking import MaskingCollator\n")
    sideways = package / "evaluation" / "bad.py"
    sideways.write_text("import caev2_hf.pretraining.schedule\nfrom caev2_hf.data import masking\n")
    assert layer_violations(upward, package) == ["bad.py (data) imports caev2_hf.pretraining.step, a higher layer"]
    assert layer_violations(sideways, package) == [
        "bad.py: job evaluation imports job pretraining; move the shared part down"
    ]
