"""The package's shape: one folder per op in Python and in C++, what the ops share in a
place of its own that knows no op, the op library never imports the training
application, the application uses the library's public API only, and the facts two
languages share (estimator order, statistics columns, version) agree."""

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import torch

import dim_fused

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dim_fused"
TRAINING = PACKAGE / "training"
OPS = PACKAGE / "ops"
OP_NAMES = ("mi_bound", "dot_product_mi", "concat_conv_mi")


def imports_of(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, imported names, relative level) of every import in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", [alias.name for alias in node.names], node.level))
    return found


def test_importing_the_library_does_not_import_the_training_application():
    code = "import sys, dim_fused; print([m for m in sys.modules if m.startswith('dim_fused.training')])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_no_library_module_imports_training():
    for path in PACKAGE.rglob("*.py"):
        if TRAINING in path.parents:
            continue
        for module, names, _ in imports_of(path):
            assert "training" not in module.split(".") and "training" not in names, f"{path} imports training"


def _absolute(path: Path, module: str, level: int) -> str:
    """The dotted name a (possibly relative) import in `path` refers to."""
    if level == 0:
        return module
    package = list(path.relative_to(ROOT).with_suffix("").parts[:-1])
    base = package[: len(package) - (level - 1)]
    return ".".join([*base, module] if module else base)


def _imported(path: Path) -> set[str]:
    found = set()
    for module, names, level in imports_of(path):
        target = _absolute(path, module, level)
        found.add(target)
        found |= {f"{target}.{name}" for name in names}
    return found


def test_one_folder_per_op_in_python_and_in_cpp():
    for op in OP_NAMES:
        python = {p.name for p in (OPS / op).glob("*.py")}
        assert {"__init__.py", "function.py", "reference.py", "registration.py", "triton_kernels.py"} <= python, op
        cpp = {p.name for p in (ROOT / "csrc" / op).iterdir()}
        assert {f"{op}.h", f"{op}.cpp", "cpu.cpp", "cuda.cu"} == cpp, op
    assert {p.name for p in (ROOT / "csrc").iterdir()} == {"common", *OP_NAMES}
    assert not (PACKAGE / "triton").exists()


def test_the_shared_code_knows_no_op():
    for path in (OPS / "common").glob("*.py"):
        for target in _imported(path):
            assert not any(target.startswith(f"dim_fused.ops.{op}") for op in OP_NAMES), f"{path.name}: {target}"
    for path in (ROOT / "csrc" / "common").iterdir():
        includes = re.findall(r'#include "([^"]+)"', path.read_text())
        assert all("/" not in include for include in includes), f"{path.name}: {includes}"


def test_an_op_reaches_other_ops_only_through_their_references():
    """An op's folder imports the shared code and other ops' references (the oracle composes
    mi_bound); its kernels call other ops through torch.ops, never by import. Its C++ folder
    includes its own files and csrc/common only."""
    for op in OP_NAMES:
        for path in (OPS / op).glob("*.py"):
            for target in _imported(path):
                for other in OP_NAMES:
                    if other != op and target.startswith(f"dim_fused.ops.{other}"):
                        assert target.startswith(f"dim_fused.ops.{other}.reference"), f"{op}/{path.name}: {target}"
        for path in (ROOT / "csrc" / op).iterdir():
            for include in re.findall(r'#include "([^"]+)"', path.read_text()):
                assert include.startswith("../common/") or "/" not in include, f"{op}/{path.name}: {include}"


def test_references_depend_on_torch_and_the_estimators_only():
    for path in [*OPS.glob("*/reference.py"), PACKAGE / "reference.py"]:
        for module, _, level in imports_of(path):
            target = _absolute(path, module, level)
            allowed = target.split(".")[0] in ("torch", "math", "collections") or target.endswith(
                (".reference", "common.estimators")
            )
            assert allowed or target.startswith("dim_fused.ops.") and "reference" in target, f"{path}: {target}"


def test_environment_variables_are_read_in_one_module():
    for path in PACKAGE.rglob("*.py"):
        if TRAINING in path.parents or path.name == "tunables.py":
            continue
        text = path.read_text()
        assert "os.environ" not in text and "getenv" not in text, f"{path.relative_to(ROOT)} reads the environment"
    for path in (ROOT / "csrc").rglob("*"):
        if path.is_file():
            assert "getenv" not in path.read_text(), f"{path.relative_to(ROOT)} reads the environment"


def test_training_uses_the_public_api_only():
    public = set(dim_fused.__all__)
    for path in TRAINING.rglob("*.py"):
        for module, names, level in imports_of(path):
            where = f"{path.relative_to(ROOT)}: from {'.' * level}{module} import {names}"
            assert level <= 1, f"{where} reaches into the library with a relative import"
            if level == 0 and module.split(".")[0] == "dim_fused":
                parts = module.split(".")
                assert not any(p.startswith("_") for p in parts), where
                if module == "dim_fused":
                    assert set(names) <= public, where
                else:
                    assert parts[1] in public, where


def test_estimator_order_agrees_across_languages():
    header = (ROOT / "csrc" / "common" / "estimators.h").read_text()
    enum = re.search(r"enum class Estimator : int \{([^}]*)\}", header).group(1)
    assert [name.strip().lower() for name in enum.split(",")] == list(dim_fused.ESTIMATORS)
    from dim_fused.ops.common import triton_math as _math

    for name in dim_fused.ESTIMATORS:
        assert getattr(_math, name.upper()).value == dim_fused.ESTIMATORS.index(name)
    # The C++ ops accept exactly these names.
    pos, neg = torch.randn(2, 3), torch.randn(1, 2, 3)
    for name in dim_fused.ESTIMATORS:
        torch.ops.dim_fused.mi_bound(pos, neg, name)


def _enum_values(header: str, name: str) -> list[str]:
    body = re.search(rf"enum {name} : int \{{([^}}]*)\}}", header).group(1)
    return [item.strip() for item in body.split(",")]


def test_statistics_columns_agree_across_languages():
    header = (ROOT / "csrc" / "common" / "estimators.h").read_text()
    from dim_fused.ops.common import triton_math as _math

    row_stats = _enum_values(header, "RowStat")
    assert row_stats == ["kPosSum", "kNegSum", "kNegMax", "kNegSumExp", "kRowStats"]
    columns = [_math.POS_SUM, _math.NEG_SUM, _math.NEG_MAX, _math.NEG_SUM_EXP, _math.ROW_STATS]
    assert [c.value for c in columns] == list(range(len(row_stats)))


def test_version_has_one_source():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "dim_fused._version.__version__"}
    assert "version=" not in (ROOT / "setup.py").read_text()
    from importlib.metadata import version

    assert version("dim_fused") == dim_fused.__version__
