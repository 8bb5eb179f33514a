"""cffi builder (API mode, out-of-line): compiles csrc/ into the extension module `llmrun._kernel`.

setup.py names this file in `cffi_modules`, so `pip install .` runs it. Build switches (environment):
- LLMRUN_NATIVE=1   add -march=native (local experiments only: the result runs on this CPU alone)
- LLMRUN_SANITIZE=1 build with -fsanitize=address,undefined (for the sanitizer test run)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"


def header_declarations(path: Path) -> str:
    """The C API as cffi's cdef wants it: the header without preprocessor lines."""
    text = path.read_text()
    return "\n".join(line for line in text.splitlines() if not re.match(r"\s*#", line))


def compile_args() -> tuple[list[str], list[str]]:
    cflags = ["-O3", "-std=c11", "-Wall", "-Wextra", "-pthread", "-fno-math-errno"]
    ldflags = ["-pthread", "-lm"]
    if os.environ.get("LLMRUN_NATIVE") == "1":
        cflags.append("-march=native")
    if os.environ.get("LLMRUN_SANITIZE") == "1":
        cflags = [f for f in cflags if f != "-O3"] + ["-O1", "-g", "-fno-omit-frame-pointer",
                                                     "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
        ldflags.append("-fsanitize=address,undefined")
    return cflags, ldflags


ffibuilder = FFI()
ffibuilder.cdef(header_declarations(CSRC / "llmrun.h"))
_cflags, _ldflags = compile_args()
ffibuilder.set_source(
    "llmrun._kernel",
    '#include "llmrun.h"',
    sources=sorted(str(p.relative_to(ROOT)) for p in CSRC.glob("*.c")),
    include_dirs=[str(CSRC.relative_to(ROOT))],
    extra_compile_args=_cflags,
    extra_link_args=_ldflags,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
