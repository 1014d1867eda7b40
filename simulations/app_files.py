"""The Flower app's files, copied to a small folder that ``flwr run`` can package quickly.

``flwr run DIR`` builds the app bundle (FAB) by walking every file under ``DIR`` and only
then dropping what ``.gitignore`` and Flower's own rules exclude. Run from the project,
that walk visits the virtual environment (about 56,000 files) and took 1.5-3.7 s of
each launch. :func:`staged_app` finds the same files without entering a folder those
rules exclude as a whole, applies Flower's own filter (``filter_paths_for_publish``) to
them, and copies them to a folder of their own; the bundle built from it holds exactly
the files, and so has the hash, that ``flwr run`` on the project would give.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import cast

from flwr.cli.utils import build_pathspec, filter_paths_for_publish, load_gitignore_patterns
from flwr.supercore.constant import APP_PUBLISH_EXCLUDE_PATTERNS


def app_files(root: Path) -> dict[str, Path]:
    """What ``flwr run ROOT`` would package: relative POSIX path -> file.

    Folders that ``.gitignore`` or Flower's exclusions match as a whole (``.venv/``,
    ``.flwr/``, ``__pycache__/``) are not entered; symbolic links are skipped, as Flower
    skips them. Flower's filter then decides file by file.
    """
    root = root.resolve()
    gitignore = root / ".gitignore"
    skipped = build_pathspec([*load_gitignore_patterns(gitignore), *APP_PUBLISH_EXCLUDE_PATTERNS])
    found: dict[str, Path] = {}
    for folder, subfolders, names in os.walk(root, followlinks=False):
        relative = Path(folder).relative_to(root)
        subfolders[:] = [
            name
            for name in subfolders
            if not skipped.match_file(f"{(relative / name).as_posix()}/")
        ]
        for name in names:
            path = Path(folder) / name
            if not path.is_symlink():
                found[(relative / name).as_posix()] = path
    return cast(dict[str, Path], filter_paths_for_publish(found))  # it keeps our Paths


@contextmanager
def staged_app(root: Path) -> Iterator[Path]:
    """A temporary folder holding a copy of :func:`app_files` of ``root``, for ``flwr run``."""
    with TemporaryDirectory(prefix="fedseqrec-app-") as staging:
        for relative, source in app_files(root).items():
            target = Path(staging, relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        yield Path(staging)
