"""Import a benchmark script as `python benchmarks/<name>.py` finds its neighbours (its folder on `sys.path`), for the
tests that call its functions in this process; the benchmark modules it brought in are taken out again afterwards."""

import contextlib
import importlib
import sys
from pathlib import Path

FOLDER = Path(__file__).resolve().parents[1] / "benchmarks"


@contextlib.contextmanager
def benchmark_module(name: str):
    """`benchmarks/<name>.py`, freshly imported (with `harness` and any other script it imports); on exit `sys.path`
    and every benchmark module in `sys.modules` are as they were."""
    scripts = {path.stem for path in FOLDER.glob("*.py")}
    before = {script: sys.modules[script] for script in scripts if script in sys.modules}
    for script in scripts:
        sys.modules.pop(script, None)
    sys.path.insert(0, str(FOLDER))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(FOLDER))
        for script in scripts:
            sys.modules.pop(script, None)
        sys.modules.update(before)
