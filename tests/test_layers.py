"""The package's layers (docs/design.md#layers): command line (caev2_hf_cli) <- model <- shared (data, optim, hub,
plots, files, run_lock) <- jobs (pretraining, evaluation, visualize, study) <- scripts. A module may import from its own
layer or a lower one; two job packages never import each other, so each job can be read (and changed) alone; the
command-line package imports nothing of caev2_hf (nor torch: tests/test_parsing.py), so a command answers `--help`
before torch loads."""

import ast
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = ROOT / "caev2_hf"
CLI_DIR = ROOT / "caev2_hf_cli"
MODEL_MODULES = {"__init__", "configuration_caev2", "modeling_caev2", "modeling_caev2_backbone"}
SHARED = {"data", "optim", "hub", "plots", "files", "run_lock"}
JOBS = {"pretraining", "evaluation", "visualize", "study"}
PACKAGES = ("caev2_hf", "caev2_hf_cli")


def component(module: str) -> str:
    """`caev2_hf.pretraining.step` -> `pretraining`; `caev2_hf.modeling_caev2` -> `modeling_caev2`; anything of the
    command-line package -> `caev2_hf_cli`."""
    parts = module.split(".")
    if parts[0] == "caev2_hf_cli":
        return "caev2_hf_cli"
    return parts[1] if len(parts) > 1 else "__init__"


def rank(name: str) -> int:
    if name == "caev2_hf_cli":
        return 0
    if name in MODEL_MODULES:
        return 1
    if name in SHARED:
        return 2
    if name in JOBS:
        return 3
    raise AssertionError(f"caev2_hf.{name} belongs to no layer: add it to tests/test_layers.py and docs/design.md")


def module_name(path: Path, root: Path = ROOT) -> str:
    relative = path.relative_to(root).with_suffix("")
    parts = list(relative.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path = ROOT) -> list[str]:
    """Absolute names of the caev2_hf and caev2_hf_cli modules that `path` imports, relative imports resolved."""
    module = module_name(path, root)
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
    return [name for name in names if name.split(".")[0] in PACKAGES]


def layer_violations(path: Path, root: Path = ROOT) -> list[str]:
    source = component(module_name(path, root))
    problems = []
    for target_module in imported_modules(path, root):
        target = component(target_module)
        if rank(target) > rank(source):
            problems.append(f"{path.name} ({source}) imports {target_module}, a higher layer")
        elif rank(source) == rank(target) == 3 and source != target:
            problems.append(f"{path.name}: job {source} imports job {target}; move the shared part down")
    return problems


SOURCES = sorted([*PACKAGE_DIR.rglob("*.py"), *CLI_DIR.rglob("*.py")])


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(ROOT)))
def test_imports_point_to_the_same_layer_or_below(path: Path):
    assert layer_violations(path) == []


def test_model_files_import_only_each_other():
    """The remote-code files are copied alone next to the weights: no import of the rest of the package, nor of the
    command-line package."""
    for name in ("configuration_caev2", "modeling_caev2", "modeling_caev2_backbone"):
        imports = imported_modules(PACKAGE_DIR / f"{name}.py")
        assert {component(module) for module in imports} <= MODEL_MODULES - {"__init__"}, (name, imports)


def test_nothing_in_the_packages_imports_the_commands_or_scripts():
    """caev2_hf_commands and run_*.py sit above both packages: they parse with caev2_hf_cli, then import caev2_hf."""
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        # only an absolute import reaches a top-level script: `from ..run_lock import` is the package's own module
        names += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and not node.level]
        assert not [name for name in names if name == "caev2_hf_commands" or name.startswith("run_")], path


def test_the_check_reports_upward_and_sideways_imports(tmp_path: Path):
    package, cli = tmp_path / "caev2_hf", tmp_path / "caev2_hf_cli"
    (package / "data").mkdir(parents=True)
    (package / "evaluation").mkdir()
    cli.mkdir()
    upward = package / "data" / "bad.py"
    upward.write_text("from ..pretraining.step import PretrainingStep\nfrom .masking import BlockMaskGenerator\n")
    sideways = package / "evaluation" / "bad.py"
    sideways.write_text("import caev2_hf.pretraining.schedule\nfrom caev2_hf.data import masking\n")
    heavy = cli / "bad.py"
    heavy.write_text("from .errors import UserError\nfrom caev2_hf.configuration_caev2 import CAEv2Config\n")
    assert layer_violations(upward, tmp_path) == ["bad.py (data) imports caev2_hf.pretraining.step, a higher layer"]
    assert layer_violations(sideways, tmp_path) == [
        "bad.py: job evaluation imports job pretraining; move the shared part down"
    ]
    assert layer_violations(heavy, tmp_path) == [
        "bad.py (caev2_hf_cli) imports caev2_hf.configuration_caev2, a higher layer"
    ]
