"""How tests run the `llmrun` command: the installed console script where there is one (CI installs the
package, and `python -m` from the repository root would import the unbuilt sources instead), else
`python -m llmrun.cli` (a development tree with the extension built in place)."""

from __future__ import annotations

import sys
from pathlib import Path

SCRIPT = Path(sys.executable).parent / "llmrun"
LLMRUN = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "llmrun.cli"]
