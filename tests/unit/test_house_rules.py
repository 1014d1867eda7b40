"""The house rules of the code base: sizes, layout, import direction, documentation."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from common.federation import messages
from common.federation.config import FederatedConfig
from tests.helpers import PROJECT_ROOT

PACKAGES = ("common", "server", "client", "simulations")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
MAX_README_LINES = 200


def modules(*packages: str) -> list[Path]:
    """Every Python module under the given top-level packages."""
    return sorted(path for name in packages for path in (PROJECT_ROOT / name).rglob("*.py"))


def relative(path: Path) -> str:
    return str(path.relative_to(PROJECT_ROOT))


@pytest.mark.parametrize("path", modules(*PACKAGES), ids=relative)
def test_module_is_at_most_400_lines(path: Path) -> None:
    lines = len(path.read_text().splitlines())

    assert lines <= MAX_MODULE_LINES, f"{relative(path)} has {lines} lines"


@pytest.mark.parametrize("path", modules(*PACKAGES), ids=relative)
def test_functions_are_at_most_60_lines(path: Path) -> None:
    tree = ast.parse(path.read_text())
    functions = (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef))

    too_long = {
        f"{f.name} (line {f.lineno}): {f.end_lineno - f.lineno + 1} lines"  # type: ignore[operator]
        for f in functions
        if f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES  # type: ignore[operator]
    }

    assert not too_long, f"{relative(path)}: {sorted(too_long)}"


def test_common_holds_subpackages_only() -> None:
    top_level = sorted(p.name for p in (PROJECT_ROOT / "common").glob("*.py"))

    assert top_level == ["__init__.py"]


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (deferred imports too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", modules("server"), ids=relative)
def test_server_never_imports_client(path: Path) -> None:
    client_imports = {n for n in imported_modules(path) if n.split(".")[0] == "client"}

    assert not client_imports, f"{relative(path)} imports {sorted(client_imports)}"


MESSAGE_KEYS = {
    value
    for name, value in vars(messages).items()
    if name.isupper() and isinstance(value, str) and name not in {"TRAIN_STAGE", "VALID_STAGE"}
}


@pytest.mark.parametrize("app", ["server/server_app.py", "client/client_app.py"])
def test_apps_name_message_keys_only_through_constants(app: str) -> None:
    tree = ast.parse((PROJECT_ROOT / app).read_text())
    literals = {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }

    assert not literals & MESSAGE_KEYS, f"{app} spells {sorted(literals & MESSAGE_KEYS)}"


def test_readme_is_at_most_200_lines() -> None:
    lines = len((PROJECT_ROOT / "README.md").read_text().splitlines())

    assert lines <= MAX_README_LINES, f"README.md has {lines} lines"


def test_architecture_doc_has_the_mode_table() -> None:
    text = (PROJECT_ROOT / "docs" / "architecture.md").read_text()

    assert "## Modes" in text
    for header in ("partition-mode", "dp", "secure-aggregation", "update-compression"):
        assert f"| {header}" in text or f"{header} |" in text, header


@pytest.mark.parametrize(
    "field", [f.name for f in dataclasses.fields(FederatedConfig)], ids=lambda name: name
)
def test_every_run_config_key_is_in_the_reference(field: str) -> None:
    reference = (PROJECT_ROOT / "docs" / "reference.md").read_text()

    assert f"`{field.replace('_', '-')}`" in reference


def test_test_modules_have_unique_names() -> None:
    # tests/ has no __init__.py: two test files of one name cannot both be collected
    names = [path.name for path in (PROJECT_ROOT / "tests").rglob("test_*.py")]
    assert sorted({name for name in names if names.count(name) > 1}) == []
