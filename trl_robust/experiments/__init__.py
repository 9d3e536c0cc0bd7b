"""Experiments built on the library: the synthetic task with a known true reward (`synthetic`), its training runs
(`training_runs`) and the demo (`demo`). They import `trl_robust` like any user would; nothing in the library imports
them (only the `trl-robust demo` command does). The benchmarks' harness is not installed: `benchmarks/harness.py`."""
