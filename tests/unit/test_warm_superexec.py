"""The warm SuperExec must not import the app: the FAB's copy has to win in its children."""

from __future__ import annotations

import subprocess
import sys

import pytest

from deploy.warm_superexec import main
from tests.helpers import PROJECT_ROOT


def test_warm_superexec_imports_no_app_package() -> None:
    probe = (
        "import sys, deploy.warm_superexec as w; w.preload(('numpy',)); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'client', 'common', 'server'}))"
    )

    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == "[]"


def test_bad_flags_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--runtime-api-address", "127.0.0.1:1", "--insecure", "--preload", "nopkg"])

    assert code == 2
    assert capsys.readouterr().err.strip() == "error: --preload: No module named 'nopkg'"
