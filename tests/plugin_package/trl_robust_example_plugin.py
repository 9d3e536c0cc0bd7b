"""A third-party loss for trl-robust, registered through the `trl_robust.losses` entry point (see pyproject.toml).

ℓ(z) = 1 − tanh(s·z) with s = `example_tanh_scale` (default 2): bounded and symmetric, ℓ(z) + ℓ(−z) = 2. Its gradient
weight at z = 0 (the first step, where policy = reference) is s · (1 − tanh²(0)) = s.

trl-robust calls `register()` the first time a process resolves a loss type. Each call appends one line to the file
named by $TRL_ROBUST_EXAMPLE_PLUGIN_LOG (if set), so the test sees which processes loaded the plugin and that the
training process really computed the loss with this function.
"""

import os

import torch

NAME = "example_tanh"


def _note(event: str) -> None:
    log = os.environ.get("TRL_ROBUST_EXAMPLE_PLUGIN_LOG")
    if log:
        with open(log, "a") as handle:
            handle.write(f"{event} pid={os.getpid()}\n")


def example_tanh_loss(z: torch.Tensor, scale: float = 2.0) -> torch.Tensor:
    _note("computed")
    return 1 - torch.tanh(scale * z)


def register() -> None:
    from trl_robust import Hyperparameter, register_loss

    _note("registered")
    register_loss(
        NAME,
        example_tanh_loss,
        hyperparameters={
            "scale": Hyperparameter(
                "example_tanh_scale", default=2.0, check=lambda v: v > 0, rule="> 0", help="s of `example_tanh`."
            )
        },
    )
