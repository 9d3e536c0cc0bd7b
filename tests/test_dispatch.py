"""The derived `_compute_loss`: TRL's code plus one branch, with clear errors when TRL changes shape."""

import inspect
import linecache
import traceback

import pytest
import torch
import trl

from trl_robust import IncompatibleTRLError, RobustDPOTrainer, compat, register_loss, unregister_loss
from trl_robust.compat import supported_trl_text
from trl_robust.integration import dispatch
from trl_robust.integration.trainer import integrate_with_trl

from .conftest import first_batch, train_args

pytestmark = pytest.mark.parity  # also run against every TRL minor release in the range (.ci/run)

HOOK_CALL = (
    "self._registered_per_sequence_loss(loss_type, chosen_scores, rejected_scores, ref_chosen_logps, "
    "ref_rejected_logps, mode)"
)


def test_derived_source_is_trls_with_only_the_raise_replaced():
    integrate_with_trl()  # what the first trainer construction does
    trl_lines, first = inspect.getsourcelines(trl.DPOTrainer._compute_loss)
    code = RobustDPOTrainer._compute_loss.__code__
    derived = linecache.getlines(code.co_filename)
    assert code.co_filename.startswith("<trl_robust.integration.dispatch:")
    assert code.co_firstlineno == first  # line numbers match TRL's file
    derived_body = derived[first - 1 : first - 1 + len(trl_lines)]
    changed = [i for i, (a, b) in enumerate(zip(trl_lines, derived_body)) if a.strip() != b.strip()]
    # One line holds the hook call; the rest of the replaced `raise ValueError(...)` became blank lines.
    assert HOOK_CALL in derived_body[changed[0]]
    assert "raise ValueError" in trl_lines[changed[0]]
    assert all(derived_body[i].strip() == "" for i in changed[1:])


def test_tracebacks_from_a_registered_loss_show_real_lines(tiny_model_path, preference_dataset, tmp_path):
    def exploding_loss(z):
        raise RuntimeError("boom")

    register_loss("exploding", exploding_loss)
    try:
        trainer = RobustDPOTrainer(
            model=tiny_model_path, args=train_args(tmp_path, loss_type="exploding"), train_dataset=preference_dataset
        )
        with pytest.raises(RuntimeError, match="boom") as err:
            trainer.compute_loss(trainer.model, first_batch(trainer))
    finally:
        unregister_loss("exploding")
    frames = traceback.extract_tb(err.value.__traceback__)
    derived = [f for f in frames if f.filename.startswith("<trl_robust.integration.dispatch:")]
    assert len(derived) == 1
    assert derived[0].line == f"per_sequence_loss = {HOOK_CALL}"
    # Lines before the branch are TRL's own, at TRL's own line numbers.
    assert linecache.getline(derived[0].filename, 1 + inspect.getsourcelines(trl.DPOTrainer._compute_loss)[1]).strip() == (
        inspect.getsourcelines(trl.DPOTrainer._compute_loss)[0][1].strip()
    )


# Stand-ins for a future TRL whose `_compute_loss` changed shape.
class NoLossLoop:
    def _compute_loss(self, model, inputs, return_outputs):
        chosen_scores = rejected_scores = ref_chosen_logps = ref_rejected_logps = mode = None
        return self.loss_fn(chosen_scores, rejected_scores, mode)


class NoFinalRaise:
    def _compute_loss(self, model, inputs, return_outputs):
        chosen_scores = rejected_scores = ref_chosen_logps = ref_rejected_logps = mode = None
        for loss_type, loss_weight in zip(self.loss_types, self.loss_weights, strict=True):
            if loss_type == "sigmoid":
                per_sequence_loss = chosen_scores - rejected_scores
            else:
                per_sequence_loss = None
        return per_sequence_loss


class RenamedScores:
    def _compute_loss(self, model, inputs, return_outputs):
        chosen_rewards = rejected_rewards = ref_chosen_logps = ref_rejected_logps = mode = None
        for loss_type, loss_weight in zip(self.loss_types, self.loss_weights, strict=True):
            if loss_type == "sigmoid":
                per_sequence_loss = chosen_rewards - rejected_rewards
            else:
                raise ValueError(f"Unknown loss type: {loss_type}")
        return per_sequence_loss


class SameShape:
    def _compute_loss(self, model, inputs, return_outputs):
        chosen_scores, rejected_scores, mode = inputs
        ref_chosen_logps = ref_rejected_logps = torch.zeros_like(chosen_scores)
        loss = 0.0
        for loss_type, loss_weight in zip(self.loss_types, self.loss_weights, strict=True):
            if loss_type == "sigmoid":
                per_sequence_loss = chosen_scores - rejected_scores
            elif loss_type == "ipo":
                per_sequence_loss = (chosen_scores - rejected_scores) ** 2
            else:
                raise ValueError(f"Unknown loss type: {loss_type}")
            loss += per_sequence_loss.mean() * loss_weight
        return loss


@pytest.mark.parametrize(
    "cls, reason",
    [
        (NoLossLoop, "no `for loss_type, loss_weight"),
        (NoFinalRaise, "does not end in `else: raise ValueError"),
        (RenamedScores, "no longer defines ['chosen_scores', 'rejected_scores']"),
    ],
)
def test_a_trl_with_another_shape_is_refused_with_the_supported_range(cls, reason):
    with pytest.raises(IncompatibleTRLError) as err:
        dispatch.derive_compute_loss(cls._compute_loss)
    assert reason in str(err.value)
    assert supported_trl_text() in str(err.value)


def test_a_method_of_the_expected_shape_gets_the_branch():
    derived = dispatch.derive_compute_loss(SameShape._compute_loss)
    assert compat.analyse(SameShape._compute_loss).builtin_names == ("sigmoid", "ipo")

    class Host:
        loss_types, loss_weights = ["sigmoid", "custom"], [1.0, 1.0]

        def _registered_per_sequence_loss(self, loss_type, chosen_scores, rejected_scores, ref_chosen, ref_rejected, mode):
            assert (loss_type, mode) == ("custom", "train")
            return 10 * (chosen_scores - rejected_scores)

    inputs = (torch.tensor([3.0]), torch.tensor([1.0]), "train")
    assert derived(Host(), None, inputs, False).item() == pytest.approx(2.0 + 20.0)


def test_installed_trl_is_inside_the_supported_range():
    assert compat.is_supported_trl(), f"CI installed TRL {trl.__version__}, outside {supported_trl_text()}"
