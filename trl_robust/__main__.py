"""`python -m trl_robust ...` is the `trl-robust` command."""

from .cli import main

raise SystemExit(main())
