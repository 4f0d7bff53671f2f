"""Import boundaries that deployment relies on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_local_pool_does_not_need_ray() -> None:
    """The GPU test machine has no Ray: the thread pool must import without it."""
    code = "import sys, workers, workers.local_pool; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=ROOT)
