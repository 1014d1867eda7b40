"""The staged Flower app: the files ``flwr run`` on the project would package, found fast."""

from __future__ import annotations

import os
from pathlib import Path

from flwr.cli.build import build_fab_from_disk
from flwr.cli.utils import collect_files, filter_paths_for_publish

from simulations.app_files import app_files, staged_app
from simulations.launch import PROJECT_ROOT

TREE = {
    "pyproject.toml": (PROJECT_ROOT / "pyproject.toml").read_text(),  # a valid Flower app
    ".gitignore": "runs/\nresults/\n!keep/results/\n*.log\n",
    "pkg/a.py": "A = 1\n",
    "pkg/sub/b.py": "B = 2\n",
    "pkg/notes.md": "notes\n",
    "pkg/data.bin": "not packaged\n",
    "pkg/run.log": "ignored\n",
    "pkg/__pycache__/a.cpython-311.pyc": "cache\n",
    ".venv/lib/site.py": "x = 1\n",
    ".flwr/apps/old.py": "x = 1\n",
    "runs/r.json": "{}\n",
    "keep/results/k.json": "{}\n",
    "results/r.json": "{}\n",
}


def flowers_choice(root: Path) -> set[str]:
    """What ``flwr run ROOT`` packages: its own walk of everything, then its filter."""
    return set(filter_paths_for_publish(collect_files(root.resolve())))


def write_tree(root: Path) -> Path:
    for relative, text in TREE.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    os.symlink(root / "pkg" / "a.py", root / "pkg" / "link.py")  # Flower skips links
    return root


def test_the_files_are_those_flower_would_package(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "app")
    assert set(app_files(root)) == flowers_choice(root)
    assert set(app_files(root)) == {
        "pyproject.toml", ".gitignore", "pkg/a.py", "pkg/sub/b.py", "pkg/notes.md",
        "keep/results/k.json",
    }  # fmt: skip


def test_the_staged_app_gives_the_same_bundle_byte_for_byte(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "app")
    with staged_app(root) as staged:
        assert build_fab_from_disk(staged) == build_fab_from_disk(root)
    assert not staged.exists()


def test_the_project_itself_stages_what_flwr_run_would_package() -> None:
    """The real tree (virtual environment, run folders, .flwr and all)."""
    assert set(app_files(PROJECT_ROOT)) == flowers_choice(PROJECT_ROOT)
