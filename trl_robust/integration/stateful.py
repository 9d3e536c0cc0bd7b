"""The trainer side of the state a registered loss carries across training steps (`trl_robust.noise.loss_states`):
building one `LossState` per stateful loss type at construction, the name its estimate is logged under, and the callback
that updates the states after each optimizer step and puts them into every checkpoint's `trainer_state.json`
(`state.stateful_callbacks[STATE_KEY]`, as ROPO's filter keeps its own), so that a run resumed from a checkpoint
continues from the η the uninterrupted run had. `RobustLossMixin` (`trl_robust.integration.core`) calls these.
"""

from transformers import TrainerCallback

from ..noise.loss_states import FLIP_RATE, LossState


def build_loss_states(specs: dict, hyperparameter) -> dict[str, LossState]:
    """loss type → its `LossState`, for the registered loss types in `specs` that have one; `hyperparameter(attribute)`
    reads a config value (`trl_robust.config.robust_hyperparameter`)."""
    states = {}
    for name, spec in specs.items():
        if spec.state is not None:
            states[name] = spec.state(**{kw: hyperparameter(h.attribute) for kw, h in spec.all_hyperparameters.items()})
    return states


def metric_names(states: dict, flip_rate_taken: bool) -> dict[str, str]:
    """loss type → the name its flip-rate estimate is logged under: `noise/estimated_flip_rate` when one loss type
    estimates it and ROPO's `auto` filter does not log its own there (`flip_rate_taken`); else
    `<loss type>/estimated_flip_rate`, so that two estimates are never averaged into one number."""
    alone = len(states) == 1 and not flip_rate_taken
    return {name: FLIP_RATE if alone else f"{name}/estimated_flip_rate" for name in states}


class LossStateCallback(TrainerCallback):
    """The trainer's loss states across optimizer steps and checkpoints: `end_step()` after each optimizer step, and
    the states into `state.stateful_callbacks[STATE_KEY]` (written with every checkpoint); a run resumed from such a
    checkpoint starts from the saved states, a fresh `train()` from the initial ones."""

    STATE_KEY = "trl_robust.LossStates"

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        saved = ((state.stateful_callbacks or {}).get(self.STATE_KEY) or {}).get("attributes", {})
        for name, loss_state in self.trainer._loss_states.items():
            loss_state.restore(saved.get(name, {}))

    def on_step_end(self, args, state, control, **kwargs):
        for loss_state in self.trainer._loss_states.values():
            loss_state.end_step()
        attributes = {name: s.export() for name, s in self.trainer._loss_states.items()}
        state.stateful_callbacks[self.STATE_KEY] = {"args": {}, "attributes": attributes}
