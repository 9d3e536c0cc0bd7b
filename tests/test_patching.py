"""`patch_trl` / `unpatch_trl`: explicit, idempotent, reversible."""

import subprocess
import sys
import textwrap

import pytest
import trl

import trl_robust
from trl_robust import RobustDPOConfig, RobustDPOTrainer, RobustRewardConfig, RobustRewardTrainer

pytestmark = pytest.mark.parity  # also run against every TRL minor release in the range (.ci/run)

ORIGINAL_TRAINER, ORIGINAL_CONFIG = trl.trainer.dpo_trainer.DPOTrainer, trl.trainer.dpo_config.DPOConfig
ORIGINAL_REWARD_TRAINER = trl.trainer.reward_trainer.RewardTrainer
ORIGINAL_REWARD_CONFIG = trl.trainer.reward_config.RewardConfig


@pytest.fixture
def patched():
    trl_robust.patch_trl()
    yield
    trl_robust.unpatch_trl()


def test_importing_the_package_changes_nothing_in_trl():
    code = textwrap.dedent("""
        import trl
        before = (trl.DPOTrainer, trl.DPOConfig, trl.trainer.dpo_trainer.DPOTrainer, trl.RewardTrainer, trl.RewardConfig)
        import trl_robust
        after = (trl.DPOTrainer, trl.DPOConfig, trl.trainer.dpo_trainer.DPOTrainer, trl.RewardTrainer, trl.RewardConfig)
        assert before == after, after
        assert not trl_robust.is_trl_patched()
        print("unchanged")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "unchanged"


def test_patch_rebinds_every_public_home_of_the_classes(patched):
    from trl import DPOConfig, DPOTrainer

    assert DPOTrainer is RobustDPOTrainer and DPOConfig is RobustDPOConfig
    assert trl.trainer.DPOTrainer is RobustDPOTrainer
    assert trl.trainer.dpo_trainer.DPOTrainer is RobustDPOTrainer
    assert trl.trainer.dpo_config.DPOConfig is RobustDPOConfig
    assert trl_robust.is_trl_patched()


def test_patch_rebinds_the_reward_classes_too(patched):
    from trl import RewardConfig, RewardTrainer

    assert RewardTrainer is RobustRewardTrainer and RewardConfig is RobustRewardConfig
    assert trl.trainer.RewardTrainer is RobustRewardTrainer and trl.trainer.RewardConfig is RobustRewardConfig
    assert trl.trainer.reward_trainer.RewardTrainer is RobustRewardTrainer
    assert trl.trainer.reward_config.RewardConfig is RobustRewardConfig


def test_patch_is_idempotent_and_unpatch_restores_trl():
    trl_robust.patch_trl()
    trl_robust.patch_trl()
    trl_robust.unpatch_trl()
    assert trl.DPOTrainer is ORIGINAL_TRAINER and trl.DPOConfig is ORIGINAL_CONFIG
    assert trl.trainer.dpo_trainer.DPOTrainer is ORIGINAL_TRAINER
    assert trl.trainer.dpo_config.DPOConfig is ORIGINAL_CONFIG
    assert trl.RewardTrainer is ORIGINAL_REWARD_TRAINER and trl.RewardConfig is ORIGINAL_REWARD_CONFIG
    assert trl.trainer.reward_trainer.RewardTrainer is ORIGINAL_REWARD_TRAINER
    assert trl.trainer.reward_config.RewardConfig is ORIGINAL_REWARD_CONFIG
    trl_robust.unpatch_trl()  # a second unpatch is harmless
    assert trl.DPOTrainer is ORIGINAL_TRAINER and not trl_robust.is_trl_patched()


def test_unmodified_trl_code_trains_a_robust_loss_after_patching(patched, tiny_model_path, preference_dataset, tmp_path):
    # This is what a user's existing script does, line for line.
    namespace = {"model_path": tiny_model_path, "dataset": preference_dataset, "out": str(tmp_path / "out")}
    exec(
        textwrap.dedent("""
            from trl import DPOConfig, DPOTrainer
            args = DPOConfig(output_dir=out, loss_type="ropo", ropo_alpha=6.0, max_steps=2, use_cpu=True,
                             report_to="none", save_strategy="no", per_device_train_batch_size=4, logging_steps=1)
            trainer = DPOTrainer(model=model_path, args=args, train_dataset=dataset)
            trainer.train()
        """),
        namespace,
    )
    history = namespace["trainer"].state.log_history
    # ROPO at zero margin with α = 6: c = 24/49; c·ln 2 + 6c·0.5 = 0.339508 + 1.469388 = 1.808896
    assert history[0]["loss"] == pytest.approx(1.808896, rel=1e-5)
    assert "ropo/grad_weight" in history[0]


def test_stock_trl_rejects_robust_loss_types_without_the_patch(tiny_model_path, preference_dataset, tmp_path):
    args = trl.DPOConfig(output_dir=str(tmp_path), loss_type="ropo", max_steps=1, use_cpu=True, report_to="none")
    trainer = trl.DPOTrainer(model=tiny_model_path, args=args, train_dataset=preference_dataset)
    with pytest.raises(ValueError, match="Unknown loss type: ropo"):
        trainer.train()


def test_unmodified_trl_reward_code_trains_a_symmetric_loss_after_patching(
    patched, tiny_model_path, preference_dataset, tmp_path
):
    namespace = {"model_path": tiny_model_path, "dataset": preference_dataset, "out": str(tmp_path / "out")}
    exec(
        textwrap.dedent("""
            from trl import RewardConfig, RewardTrainer
            args = RewardConfig(output_dir=out, loss_type="sympo_sigmoid", max_steps=1, use_cpu=True, bf16=False,
                                report_to="none", save_strategy="no", per_device_train_batch_size=4, logging_steps=1)
            trainer = RewardTrainer(model=model_path, args=args, train_dataset=dataset)
            trainer.train()
        """),
        namespace,
    )
    history = namespace["trainer"].state.log_history
    # SymPO's σ(−z) is below 1 (TRL's −log σ(z) can exceed it), and its metrics are logged.
    assert 0 < history[0]["loss"] < 1 and "sympo_sigmoid/grad_weight" in history[0]
