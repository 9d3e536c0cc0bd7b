"""Optional dependencies. matplotlib draws the demo's plot, the audit's histogram and the benchmarks' plots; training
never needs it, so `pip install trl-robust` leaves it out and the `plot` extra (alias `demo`) brings it. What needs it
calls `require_matplotlib` before any work, so a missing install stops at once with the command to run, not after
minutes of training or scoring."""

import importlib

# pyproject.toml's extras that install matplotlib (tests/test_optional_dependencies.py checks)
PLOT_EXTRAS = ("plot", "demo")


def require_matplotlib(purpose: str, extra: str = "plot", error: type[Exception] = ImportError) -> None:
    """Import matplotlib, or raise `error`: `purpose` needs it, `pip install 'trl-robust[<extra>]'` installs it."""
    if extra not in PLOT_EXTRAS:
        raise ValueError(f"extra must be one of {PLOT_EXTRAS}, got {extra!r}")
    try:
        importlib.import_module("matplotlib")
    except ImportError as missing:
        raise error(
            f"{purpose} needs matplotlib, which `pip install trl-robust` does not install: "
            f"pip install 'trl-robust[{extra}]'  (or pip install matplotlib)"
        ) from missing
