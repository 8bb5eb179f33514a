"""The C library (llmrun/_kernel*.so, built by cffi from csrc/), loaded once for the whole package: `ffi`, `lib`.

Two ways to get the wrong library fail here with one line that says what to do, instead of deep inside the
package: a source checkout without the built extension (the folder shadows an installed llmrun, and the import
would fail with a misleading "circular import"), and an editable install elsewhere handing this folder another
checkout's library (its C need not match this Python).
"""

from pathlib import Path

_HERE = Path(__file__).parent
_NOT_BUILT = (f"llmrun's C library (llmrun/_kernel*.so) is not built in {_HERE}: run `pip install -e .` in the "
              "repository to build it in place, or run from another directory to use the installed llmrun")

try:
    from . import _kernel
except ImportError:
    if not any(_HERE.glob("_kernel*")):
        raise ImportError(_NOT_BUILT) from None
    raise
if Path(_kernel.__file__).parent != _HERE:
    raise ImportError(f"{_NOT_BUILT} (found {_kernel.__file__} instead, from another checkout)")

ffi, lib = _kernel.ffi, _kernel.lib
