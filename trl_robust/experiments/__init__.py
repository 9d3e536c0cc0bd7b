"""Experiments built on the library: the synthetic task with a known true reward, the noise-robustness benchmark and
the demo. They import `trl_robust` like any user would; nothing in the library imports them (only the `trl-robust
demo` command does)."""
