"""`RobustDPOTrainer`: TRL's `DPOTrainer` that also accepts the registered robust loss types."""

import functools
import inspect
import logging
import math
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from transformers import TrainerCallback
from trl import DPOTrainer

from .. import compat
from ..config import RobustDPOConfig, filter_ratio, filter_scope, filters, robust_hyperparameter, validate_robust_args
from ..data import FLIP_COLUMN, ROW_COLUMN, check_trainer_datasets
from ..filtering import filter_window, filtered_loss, rankable, running_suspected_pairs, suspected_pairs
from ..noise.auto import AUTO, auto_filter_ratio, estimate_flip_rate
from ..registry import LossSpec, get_loss_spec, registered_loss_types, unknown_loss_type_error
from .. import builtin
from . import dispatch

logger = logging.getLogger(__name__)


class RobustDPOTrainer(DPOTrainer):
    """TRL's `DPOTrainer`, plus the loss types registered in `trl_robust` (`ropo`, `sympo_sigmoid`, `sympo_ramp`, ...).

    Drop-in: same arguments as `trl.DPOTrainer`. `args` may be a `RobustDPOConfig` or a plain `trl.DPOConfig`
    (the robust hyperparameters then take their defaults). Loss names and hyperparameters are validated before
    any model is loaded. Built-in loss types run TRL's own code unchanged; a registered loss type is computed
    from TRL's chosen/rejected scores (so `f_divergence_type`, `ld_alpha`, precomputed or PEFT reference,
    `use_weighting` and `loss_weights` all apply to it as to `sigmoid`).

    Extra metrics, per registered loss type `<name>` (gathered over all processes, like TRL's `rewards/*`):
    `<name>/grad_weight`, `<name>/grad_weight_vs_dpo`, `<name>/negative_margin_frac`, `<name>/saturated_frac`
    and, for losses that clip rewards, `<name>/clipped_frac`; with ROPO's filter (`ropo_filter_ratio > 0` or `auto`),
    `<name>/filtered_frac` and, when the training data has a `label_flipped` column, `<name>/filter_precision`; with
    `auto`, `noise/estimated_flip_rate` and `noise/filter_ratio` once per epoch.
    See the README's metrics glossary.

    With `ropo_filter_scope="step"` each loss type keeps a running window of recent margins and a carried count
    (`_RunningFilter`), saved in `trainer_state.json` by `_StepFilterCallback`. With `ropo_filter_scope="epoch"` a
    row-index column is added to the training dataset, and at the start of each epoch after the warm-up
    `_EpochFilterCallback` scores the training set through TRL's evaluation loop; the suspects of the epoch are saved
    in `trainer_state.json` with every checkpoint. With `ropo_filter_ratio="auto"` there is no scoring pass: the
    training steps record every pair's margin (`_free_margins`) and the callback estimates ρ from them
    (`trl_robust.noise.auto`).

    `model` and `ref_model` may also be a `builtin:` name (`builtin:tiny`), as in the `trl-robust` recipes.
    """

    _tag_names = [*getattr(DPOTrainer, "_tag_names", ()), "trl-robust"]  # (the probe reports a TRL without it)

    def __init__(self, model, ref_model=None, args=None, *pargs, **kwargs):
        integrate_with_trl()  # the probe of the installed TRL, once, before anything is loaded
        # `builtin:tiny` is not a Hub id: TRL would fail with a repo-id error. Build it locally, as the command does.
        self._builtin_model_name = model if builtin.is_builtin(model) else None
        if builtin.is_builtin(model):
            model = builtin.model_path(model)
        if builtin.is_builtin(ref_model):
            ref_model = builtin.model_path(ref_model)
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "") or "model"
            args = RobustDPOConfig(f"{str(name).rstrip('/').split('/')[-1]}-DPO")
        validate_robust_args(args)  # before TRL loads any model
        # Bad rows fail early, by split, column and row, instead of deep inside TRL's tokenisation.
        check_trainer_datasets(DPOTrainer.__init__, model, ref_model, args, *pargs, **kwargs)
        filters_per_epoch = filters(args) and filter_scope(args) == "epoch"
        if filters_per_epoch:  # the epoch filter traces every score to its row: index the rows before TRL sees them
            pargs, kwargs = _with_row_index(model, ref_model, args, pargs, kwargs)
        loss_types = [args.loss_type] if isinstance(args.loss_type, str) else list(args.loss_type)
        self._robust_specs = {t: get_loss_spec(t) for t in loss_types if get_loss_spec(t) is not None}
        self._set_model_card_data(loss_types)

        # TRL's __init__ refuses a non-default `f_divergence_type` for loss types outside a fixed set of
        # difference-based losses. Ours are functions of the chosen-minus-rejected difference too, so they are
        # admissible: show TRL 'sigmoid' in their place while it checks, then restore the user's list.
        original_loss_type = args.loss_type
        if self._robust_specs and args.f_divergence_type != "reverse_kl":
            args.loss_type = ["sigmoid" if t in self._robust_specs else t for t in loss_types]
        try:
            super().__init__(model, ref_model, args, *pargs, **kwargs)
        finally:
            args.loss_type = original_loss_type
        self.loss_types = loss_types
        # ROPO's filter reports its precision where the training data records which labels were flipped.
        columns = getattr(self.train_dataset, "column_names", None) or []
        if filters(self.args) and FLIP_COLUMN in columns:
            self._pass_through_column(FLIP_COLUMN, torch.bool)
        self._epoch_suspects = None  # per input row: distrusted this epoch (epoch scope only)
        self._row_margins = None  # while the epoch filter scores the training set: the gathered (rows, z) batches
        # With `ropo_filter_ratio="auto"`: this epoch's training margins, gathered (rows, z) batches still on the device
        # (None otherwise); `_EpochFilterCallback` takes them at the end of the epoch.
        self._free_margins = [] if filter_ratio(self.args) == AUTO else None
        if filters_per_epoch:
            self._pass_through_column(ROW_COLUMN, torch.long)
            self.add_callback(_EpochFilterCallback(self))
        self._step_filters = {}  # loss type -> _RunningFilter (step scope only)
        if filters(self.args) and not filters_per_epoch:
            self.add_callback(_StepFilterCallback(self))
        self._skipped_steps = set()  # optimizer steps skipped for non-finite margins (fp16 only)
        self._warned_all_clipped = False
        self._warn_where_the_filter_cannot_reach_its_ratio()

    def _set_model_card_data(self, loss_types: list[str]) -> None:
        self._tag_names = [*type(self)._tag_names, *loss_types]
        if not self._robust_specs:
            return  # built-in losses only: TRL's DPO name and citation are right
        papers = list({s.paper.arxiv_id: s.paper for s in self._robust_specs.values() if s.paper}.values())
        # Every loss in the list, TRL's built-ins too: `[sympo_sigmoid, sft]` trains on both.
        self._name = f"DPO with the {' + '.join(dict.fromkeys(loss_types))} loss (trl-robust)"
        citations = [DPOTrainer._paper["citation"], *(p.citation for p in papers)]
        self._paper = {
            "title": papers[0].title if papers else DPOTrainer._paper["title"],
            "id": papers[0].arxiv_id if papers else DPOTrainer._paper["id"],
            "citation": "\n\n".join(citations),
        }

    def save_model(self, output_dir=None, _internal_call=False):
        """TRL's `save_model`; a final save into `args.output_dir` also writes the model card.

        TRL writes the card only with checkpoints and on `push_to_hub`, so a run with `save_strategy="no"` would
        save a model whose card never says how it was trained.
        """
        super().save_model(output_dir, _internal_call)
        if not _internal_call and output_dir in (None, self.args.output_dir):
            self.create_model_card()

    def create_model_card(self, model_name=None, *args, **kwargs):
        """TRL's model card, named and linked sensibly where TRL's template would say "None".

        TRL titles the card "Model Card for {model_name}", names the base model with a Hub link and loads
        `hub_model_id` in its quick start; with no `model_name` (our final save), a local base model (a directory, or
        `builtin:tiny`) and no Hub repo, all three read "None". The name defaults to what TRL's own checkpoints use
        (the Hub repo or the output directory), the link to a local base model becomes its description, and the quick
        start loads the output directory.
        """
        if model_name is None:
            model_name = (self.args.hub_model_id or Path(self.args.output_dir).name).split("/")[-1]
        super().create_model_card(model_name, *args, **kwargs)
        card = Path(self.args.output_dir) / "README.md"
        if not self.is_world_process_zero() or not card.is_file():
            return
        text = card.read_text()
        # TRL's quick start loads `hub_model_id`, None unless pushing to the Hub: point it at the saved directory.
        text = text.replace('model="None"', f"model={str(self.args.output_dir)!r}".replace("'", '"'))
        broken = "[None](https://huggingface.co/None)"  # TRL's template with `base_model=None`
        if broken in text:
            name_or_path = getattr(self.model.config, "_name_or_path", "") or ""
            if self._builtin_model_name:
                local = f"trl-robust's built-in model `{self._builtin_model_name}`"
            elif name_or_path:
                local = f"the local model `{Path(name_or_path).name}`"
            else:
                local = "a model passed as an object"
            text = text.replace(broken, local)
        card.write_text(text)

    # `_compute_loss` is TRL's own method, derived from the installed TRL with one extra branch that calls the method
    # below; `integrate_with_trl` installs it at the first construction.

    def _registered_per_sequence_loss(
        self, loss_type, chosen_scores, rejected_scores, ref_chosen_logps, ref_rejected_logps, mode
    ):
        """Per-pair loss of a registered loss type; called from the branch `dispatch` adds to TRL's loss chain."""
        spec = get_loss_spec(loss_type)
        if spec is None:  # e.g. a name unregistered after the trainer was built
            raise unknown_loss_type_error(loss_type)
        if self._row_margins is not None:  # the epoch filter's scoring pass: record, train nothing, log nothing
            if loss_type == next(iter(self._robust_specs)):  # once per batch, whatever the number of loss types
                self._record_by_row(self._row_margins, self.beta * (chosen_scores - rejected_scores))  # unclipped z
            return torch.zeros_like(chosen_scores)
        if self._free_margins is not None and mode == "train" and loss_type == next(iter(self._robust_specs)):
            # `auto`: every pair's margin in the step that trains on it, for the next epoch's estimate (no extra pass).
            # Plain `gather`, kept on the device (no host sync per step): `gather_for_metrics` would cut the wrong
            # micro-batch where transformers fetches a whole accumulation window ahead. The last batch's padding
            # repeats rows already met this epoch, and `_take_free_margins` keeps a row's first margin.
            z = (self.beta * (chosen_scores - rejected_scores)).detach().float()
            rows = self._batch_columns[ROW_COLUMN].to(z.device)
            self._free_margins.append(self.accelerator.gather((rows, z)))
        hyperparameters = {kw: robust_hyperparameter(self.args, h.attribute) for kw, h in spec.hyperparameters.items()}
        loss_fn = functools.partial(spec.fn, **hyperparameters)
        clip = robust_hyperparameter(self.args, "sympo_reward_clip") if spec.uses_reward_clip else None
        # z in float32 whatever dtype TRL's scores arrive in: in float16 a reward beyond 65504 is inf, and a difference
        # of log-prob sums in the thousands keeps no fractional digits. (A no-op for float32 scores.)
        chosen_scores, rejected_scores = chosen_scores.float(), rejected_scores.float()
        if clip is None:
            z = self.beta * (chosen_scores - rejected_scores)  # the same expression as TRL's `sigmoid` margin
            clipped = None
        else:
            # SymPO's reward clipping: bound each side's reward before the difference.
            chosen_rewards, rejected_rewards = self.beta * chosen_scores, self.beta * rejected_scores
            clipped = (chosen_rewards.abs() > clip) | (rejected_rewards.abs() > clip)
            z = chosen_rewards.clamp(-clip, clip) - rejected_rewards.clamp(-clip, clip)
        # Clipping would hide a NaN or inf in the scores (clamp maps inf to ±clip): check them before it.
        no_flags = torch.zeros_like(z, dtype=torch.bool)
        bad_reference = ~(torch.isfinite(ref_chosen_logps) & torch.isfinite(ref_rejected_logps))
        columns = dict(
            z=z.detach(),
            clipped=clipped if clipped is not None else no_flags,
            bad_reference=bad_reference,
            bad_margin=~torch.isfinite(chosen_scores - rejected_scores) & ~bad_reference,
            flipped=self._flip_record if self._flip_record is not None else no_flags,
        )
        if self._epoch_suspects is not None and mode == "train":
            columns["epoch_suspect"] = self._epoch_suspects[self._batch_columns[ROW_COLUMN].to(z.device)]
        pairs = self._gather_pairs(**columns)
        suspected, running = self._suspected_pairs(spec.name, pairs, mode)
        finite = self._log_margin_metrics(spec, loss_fn, pairs, clipped is not None, suspected, mode, running)
        if suspected is None:
            per_pair = loss_fn(z)
        else:
            start = self.accelerator.process_index * len(z)  # `gather` concatenates the processes in rank order
            mode_name = robust_hyperparameter(self.args, "ropo_filter_mode")
            local = suspected[start : start + len(z)]
            per_pair = filtered_loss(loss_fn, z, local, mode_name, n_global=len(suspected), k_global=suspected.sum())
        if not finite:
            # fp16: make every gradient of this step NaN, so that the loss scaler skips the optimizer step (as it does
            # for stock TRL), whatever the loss does with the bad pairs (SymPO's clip maps an inf reward to ±c).
            return per_pair * math.nan
        return per_pair

    def _gather_pairs(self, **columns) -> dict:
        """Every process's per-pair values, in one gather (flags as float: not every backend gathers bool)."""
        stacked = torch.stack([column.float() for column in columns.values()], dim=-1)
        return dict(zip(columns, self.accelerator.gather(stacked).unbind(-1)))

    def _suspected_pairs(self, loss_type, pairs, mode):
        """ROPO's filter: the mask of distrusted pairs of the global batch (None where it does not apply), and for the
        step scope the running filter with the device values its host copy needs after this step's one transfer."""
        if not filters(self.args) or mode != "train":
            return None, None
        if filter_scope(self.args) == "epoch":  # chosen at the start of the epoch
            return (pairs["epoch_suspect"].bool() if "epoch_suspect" in pairs else None), None
        # The step scope: each pair ranked among the recent margins of this loss type (`running_suspected_pairs`).
        # The window fills during the warm-up too, so that the first filtered pairs meet a full window.
        running = self._step_filters.get(loss_type)
        if running is None:
            running = self._step_filters[loss_type] = _RunningFilter(self.accelerator.device)
        z = pairs["z"]
        if self.state.global_step < robust_hyperparameter(self.args, "ropo_filter_warmup_steps"):
            suspected, window, debt = None, torch.cat([running.history, rankable(z)]), running.debt
        else:
            max_margin = robust_hyperparameter(self.args, "ropo_filter_max_margin")
            ratio = filter_ratio(self.args)
            suspected, window, debt = running_suspected_pairs(z, running.history, running.debt, ratio, max_margin)
        keep = max(self._filter_window() - len(z), 0)
        running.history, running.debt = window[max(len(window) - keep, 0) :], debt
        running.pending = (rankable(z), debt, keep)
        return suspected, running

    def _filter_window(self) -> int:
        """How many recent margins the step filter ranks a pair among: one optimizer step's pairs, at least 10/ρ."""
        pairs_per_step = (
            self.args.per_device_train_batch_size * self.accelerator.num_processes * self.args.gradient_accumulation_steps
        )
        return filter_window(pairs_per_step, filter_ratio(self.args))

    def _planned_optimizer_steps(self) -> int | None:
        """The run's optimizer steps as `Trainer.train` will count them, or None where the data has no length."""
        args = self.args
        if args.max_steps > 0:
            return args.max_steps
        try:
            n_rows = len(self.train_dataset)
        except TypeError:
            return None
        per_step = args.per_device_train_batch_size * args.world_size
        batches = n_rows // per_step if args.dataloader_drop_last else math.ceil(n_rows / per_step)
        return math.ceil(args.num_train_epochs * max(math.ceil(batches / args.gradient_accumulation_steps), 1))

    def _warn_where_the_filter_cannot_reach_its_ratio(self) -> None:
        """Say at construction when ROPO's filter will distrust nothing, or cannot reach its share ρ, in this run."""
        if not filters(self.args) or self.train_dataset is None:
            return
        total = self._planned_optimizer_steps()
        if total is None:
            return
        warmup = robust_hyperparameter(self.args, "ropo_filter_warmup_steps")
        if warmup >= total:
            warnings.warn(
                f"ropo_filter_warmup_steps={warmup} is at or beyond the {total} optimizer steps of this run: ROPO's "
                "filter will distrust nothing. Lower the warm-up (it trains on every pair first; 10-20% of the steps "
                "is a common choice) or train for longer.",
                UserWarning,
                stacklevel=3,
            )
            return
        if filter_scope(self.args) != "step":
            return
        ratio = filter_ratio(self.args)
        window = self._filter_window()
        filtered = (total - warmup) * (
            self.args.per_device_train_batch_size * self.args.world_size * self.args.gradient_accumulation_steps
        )
        if filtered < window:
            warnings.warn(
                f"ROPO's step filter ranks each pair among the last {window} margins and reaches its share "
                f"ρ={ratio} over about that many pairs, but this run trains on only {filtered} pairs after its "
                f"{warmup} warm-up step{'' if warmup == 1 else 's'}: it will distrust about {math.floor(ratio * filtered)}, "
                "and the share it realises can differ from ρ. Train for longer or shorten the warm-up.",
                UserWarning,
                stacklevel=3,
            )

    # --- ROPO's per-epoch filter -----------------------------------------------------------------------------------

    def _record_by_row(self, records: list, *values: torch.Tensor) -> None:
        """Append this batch's input rows and per-pair `values` to `records`, gathered over every process without the
        pairs accelerate repeats to even out the last batch; `values_by_row` puts them in row order. What the epoch
        filter's scoring pass and the audit record."""
        rows = self._batch_columns.get(ROW_COLUMN)
        if rows is None:
            raise RuntimeError("a batch was scored without its row indices")
        gathered = self.accelerator.gather_for_metrics((rows, *(value.detach().float() for value in values)))
        records.append([t.cpu() for t in gathered])

    def _score_training_set(self) -> dict[int, float]:
        """The margin z = β·Δ of every training pair under the current model, by input row.

        TRL's own evaluation pass (`prediction_step` → `compute_loss` → its forward and reference code) over the
        tokenised training set, in eval mode, batched by `per_device_eval_batch_size`, on every process; the hook
        records TRL's unclipped margin per row. The pass leaves no trace: TRL's evaluation metrics are set aside and
        restored, and the random number generators are restored so that training draws what it would have drawn.
        """
        saved_metrics = self._metrics["eval"]
        self._metrics["eval"] = defaultdict(list)
        self._row_margins = []
        device = self.accelerator.device
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                self.evaluation_loop(
                    self.get_eval_dataloader(self.train_dataset),
                    description="ROPO filter: scoring the training pairs",
                    prediction_loss_only=True,
                    metric_key_prefix="ropo_filter",
                )
            records = self._row_margins
        finally:
            self._row_margins = None
            self._metrics["eval"] = saved_metrics
        rows = sorted(set(self.train_dataset[ROW_COLUMN]))  # (TRL may have dropped rows that do not fit max_length)
        (z,) = values_by_row(records, rows)
        margins = dict(zip(rows, z.tolist()))
        bad = [row for row, value in margins.items() if not math.isfinite(value)]
        if bad:
            raise FloatingPointError(
                f"ROPO's epoch filter found non-finite margins for {len(bad)} training pair(s) (rows {sorted(bad)[:10]}): "
                "NaN or infinite log-probs of the policy or the reference. trl-robust stops rather than train on them."
            )
        return margins

    def _choose_epoch_suspects(self) -> list[int]:
        """Score the training set and distrust its lowest-margin ρ share (`_lowest_margin_rows`)."""
        return self._lowest_margin_rows(self._score_training_set(), filter_ratio(self.args))

    def _lowest_margin_rows(self, margins: dict[int, float], ratio: float) -> list[int]:
        """Of the rows in `margins` (row -> z), the ⌊ρ·N⌋ with the lowest margin (ties: the lower row first), only those
        below `ropo_filter_max_margin` if it is set."""
        rows = sorted(margins)
        z = torch.tensor([margins[row] for row in rows], dtype=torch.float64)
        chosen = suspected_pairs(z, ratio, robust_hyperparameter(self.args, "ropo_filter_max_margin"))
        return [row for row, suspect in zip(rows, chosen.tolist()) if suspect]

    def _take_free_margins(self) -> dict[int, float]:
        """The training margins recorded since the last call (`auto`), by input row, and start afresh.

        A row met twice (in the padding accelerate adds to the last batch of an epoch, so that every process has one)
        keeps its first margin; a row not met (dropped with `dataloader_drop_last`) is absent.
        """
        records, self._free_margins = self._free_margins, []
        if not records:
            return {}
        records = [[t.cpu() for t in record] for record in records]
        rows = list(dict.fromkeys(torch.cat([record[0] for record in records]).long().tolist()))
        (z,) = values_by_row(records, rows)
        return dict(zip(rows, z.tolist()))

    def _set_epoch_suspects(self, rows: list[int] | None) -> None:
        """Distrust these input rows until the next epoch's choice (None: no filtering this epoch)."""
        if rows is None:
            self._epoch_suspects = None
            return
        n_rows = max(self.train_dataset[ROW_COLUMN]) + 1
        mask = torch.zeros(n_rows, dtype=torch.bool)
        mask[torch.tensor(rows, dtype=torch.long)] = True
        self._epoch_suspects = mask.to(self.accelerator.device)

    def _log_margin_metrics(self, spec: LossSpec, loss_fn, pairs, clips: bool, suspected, mode, running) -> bool:
        """Log how the loss weighs the margins of the global batch (see README glossary); False if they are not finite.

        Also the one place that sees every pair of the global batch on the host, so it refuses to go on if any pair's
        reference or policy log-probs are not finite: a NaN margin would otherwise be trained on silently (and with
        SymPO's clip an inf one would look like an ordinary clipped pair). Every process decides alike. Under fp16
        mixed precision with a loss scaler (`non_finite_margins="auto"`) the step is skipped and counted instead, and
        False is returned so that the caller makes the scaler skip it.

        The step filter's host copy of its window and count rides on the same transfer (`running`).
        """
        z_all = pairs["z"]
        # Gradient weight w(z) = −∂ℓ/∂z, by autograd so it holds for any registered loss; also under eval's no_grad.
        with torch.enable_grad():
            z_leaf = z_all.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(loss_fn(z_leaf).sum(), z_leaf)
        weight = -grad
        values = {
            "grad_weight": weight.mean(),
            "grad_weight_vs_dpo": weight.sum() / torch.sigmoid(-z_all).sum().clamp_min(1e-30),
            "negative_margin_frac": (z_all < 0).float().mean(),
            "saturated_frac": (weight == 0).float().mean(),
        }
        if clips:
            values["clipped_frac"] = pairs["clipped"].mean()
        if mode == "train" and filters(self.args):
            filtered = suspected if suspected is not None else torch.zeros_like(z_all, dtype=torch.bool)
            values["filtered_frac"] = filtered.float().mean()
            if self._flip_record is not None and suspected is not None:
                # Of the distrusted pairs, the share whose label was truly flipped (`flip_preferences`'s record).
                values["filter_precision"] = (filtered & pairs["flipped"].bool()).float().sum() / filtered.sum()
        counts = torch.stack([pairs["bad_reference"].sum(), pairs["bad_margin"].sum()])
        pieces = [torch.stack(list(values.values())).float(), counts.float()]
        if running is not None:
            window_z, debt, _ = running.pending
            pieces += [window_z.float(), debt.reshape(1).float()]
        # One device-to-host transfer for all of them, not one `.item()` sync each.
        host = torch.cat(pieces).tolist()
        metrics, (n_bad_reference, n_bad_margin) = host[: len(values)], host[len(values) : len(values) + 2]
        if running is not None:
            running.commit(host[len(values) + 2 : -1], host[-1])
        if n_bad_reference or n_bad_margin:  # (the metrics above are then NaN and not logged)
            message = _non_finite_message(spec.name, mode, len(z_all), n_bad_reference, n_bad_margin)
            if self._skips_non_finite_steps():
                self._record_skipped_step(message, mode)
                return False
            message += " trl-robust stops rather than train on them."
            if self.args.fp16 and robust_hyperparameter(self.args, "non_finite_margins") == "auto":
                message += " (fp16 is on, but no loss scaler would skip this step here, e.g. on a CPU.)"
            elif self.args.fp16:
                message += " (non_finite_margins='error'; 'auto' skips such steps under fp16.)"
            raise FloatingPointError(message)
        for name, value in zip(values, metrics):
            if name == "filter_precision" and math.isnan(value):
                continue  # a batch without suspects (epoch scope) has no precision; average over those with some
            self._metrics[mode][f"{spec.name}/{name}"].append(value)
        if clips and mode == "train" and metrics[list(values).index("clipped_frac")] == 1.0:
            self._warn_all_clipped()
        return True

    def _skips_non_finite_steps(self) -> bool:
        """Whether a step with non-finite margins is skipped rather than fatal: fp16 mixed precision, whose loss scaler
        (torch's `GradScaler`, FSDP's, DeepSpeed's) skips optimizer steps with non-finite gradients, unless the config
        says `non_finite_margins="error"`."""
        if not self.args.fp16 or robust_hyperparameter(self.args, "non_finite_margins") != "auto":
            return False
        return self.accelerator.scaler is not None or getattr(self, "is_deepspeed_enabled", False)

    def _record_skipped_step(self, message: str, mode: str) -> None:
        """Count a training step skipped for non-finite margins (once per optimizer step, whatever the micro-batches
        and loss types) and say so; an evaluation batch is only reported (its loss is NaN, as with stock TRL)."""
        if mode == "train":
            step = self.state.global_step + 1  # the optimizer step this micro-batch belongs to, as logged
            if step in self._skipped_steps:
                return
            self._skipped_steps.add(step)
            what = (
                f"Skipping optimizer step {step} under fp16 ({len(self._skipped_steps)} skipped so far, logged as "
                f"`<loss>/skipped_non_finite_steps`)"
            )
        else:
            what = "Evaluation under fp16 goes on with a NaN loss for this batch"
        if self.accelerator.is_main_process:
            logger.warning(
                f"{message} {what}: the loss scaler skips steps whose gradients are not finite, as for stock TRL. "
                "Set non_finite_margins='error' to stop instead."
            )

    def _warn_all_clipped(self) -> None:
        if self._warned_all_clipped:
            return
        self._warned_all_clipped = True
        clip = robust_hyperparameter(self.args, "sympo_reward_clip")
        warnings.warn(
            f"sympo_reward_clip={clip} clipped a side's reward β·score of every pair in training step "
            f"{self.state.global_step + 1}: a clipped side has zero gradient, so where both sides of every pair stay "
            "clipped the loss is constant and nothing is learned. Raise sympo_reward_clip (the SymPO authors use 10), "
            "lower beta, or set sympo_reward_clip=None (not for sympo_unhinged). `<loss>/clipped_frac` shows the share.",
            UserWarning,
            stacklevel=2,
        )

    def log(self, logs, *args, **kwargs):
        """TRL's `log`, plus the count of training steps skipped for non-finite margins where fp16 skips them."""
        if "loss" in logs and self._robust_specs and self._skips_non_finite_steps():  # a training log
            for name in self._robust_specs:
                logs[f"{name}/skipped_non_finite_steps"] = len(self._skipped_steps)
        return super().log(logs, *args, **kwargs)

    # --- dataset columns that reach the loss without being model inputs --------------------------------------------

    _passed_columns: dict = {}  # column -> dtype; per instance once `_pass_through_column` is called
    _batch_columns: dict = {}  # this batch's values of those columns

    @property
    def _flip_record(self):
        """This batch's `label_flipped` values, where the training data carries them and the filter needs them."""
        return self._batch_columns.get(FLIP_COLUMN)

    def _pass_through_column(self, column: str, dtype: torch.dtype) -> None:
        """Carry a dataset column through to `compute_loss` as a tensor of `dtype`, in `self._batch_columns`.

        TRL drops it twice otherwise: `remove_unused_columns` keeps only its signature columns, and its collator
        builds the batch from the keys it knows. Rows without the column are collated without it.
        """
        if not self._passed_columns:
            self._passed_columns = {}
            self.data_collator = _PassThroughCollator(self.data_collator, self._passed_columns)
        self._passed_columns[column] = dtype

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        missing = [column for column in self._passed_columns if column not in self._signature_columns]
        if missing:
            self._signature_columns = [*self._signature_columns, *missing]

    def compute_loss(self, model, inputs, *args, **kwargs):
        """TRL's `compute_loss`, with the passed-through columns taken out of the batch (they are not model inputs)."""
        if not self._passed_columns:
            return super().compute_loss(model, inputs, *args, **kwargs)
        self._batch_columns = {column: inputs.pop(column) for column in self._passed_columns if column in inputs}
        try:
            return super().compute_loss(model, inputs, *args, **kwargs)
        finally:
            self._batch_columns = {}


def values_by_row(records: list, rows) -> list[torch.Tensor]:
    """The per-pair values `_record_by_row` recorded, one tensor per value, in the order of `rows` (the input rows
    expected). A row recorded twice counts once; a row expected but never recorded is an error."""
    if not records:
        raise RuntimeError("no batch was scored")
    columns = [torch.cat(parts) for parts in zip(*records)]
    first = {}
    for position, row in enumerate(columns[0].long().tolist()):
        first.setdefault(row, position)
    absent = [row for row in rows if row not in first]
    if absent:
        raise RuntimeError(f"rows {absent[:10]} were lost between TRL's data loader and the loss")
    positions = torch.tensor([first[row] for row in rows], dtype=torch.long)
    return [column.float()[positions] for column in columns[1:]]


def integrate_with_trl() -> None:
    """Check the installed TRL (`trl_robust.compat.check_integration`: once, warning outside the tested range, one
    error naming every structural problem) and give `RobustDPOTrainer` its derived `_compute_loss`. Runs at the first
    trainer construction and in `patch_trl()`, before any model is loaded; importing trl-robust does not run it."""
    compat.check_integration({name: get_loss_spec(name).fn for name in registered_loss_types()})
    if "_compute_loss" not in RobustDPOTrainer.__dict__:
        RobustDPOTrainer._compute_loss = dispatch.derive_compute_loss()


class _RunningFilter:
    """The state of ROPO's step filter for one loss type: the window of recent margins and the carried count (debt) of
    `trl_robust.filtering.running_suspected_pairs`.

    Kept on the device, where the decisions are made without a host sync, and mirrored on the host from the values
    that ride on each step's one metrics transfer, so that `_StepFilterCallback` can put it into every checkpoint
    without touching the device.
    """

    def __init__(self, device, history=(), debt=0.0):
        self.history = torch.tensor(list(history), dtype=torch.float32, device=device)
        self.debt = torch.tensor(float(debt), dtype=torch.float32, device=device)
        self.host_history, self.host_debt = [float(v) for v in history], float(debt)
        self.pending = None  # (this micro-batch's margins as kept, new debt, how many to keep) until the transfer

    def commit(self, margins: list[float], debt: float) -> None:
        """Mirror the device state on the host once this step's values have arrived."""
        keep, combined = self.pending[2], self.host_history + margins
        self.host_history = combined[max(len(combined) - keep, 0) :]
        self.host_debt = debt
        self.pending = None

    def export(self) -> dict:
        return {"history": list(self.host_history), "debt": self.host_debt}


class _StepFilterCallback(TrainerCallback):
    """ROPO's step filter across checkpoints: its window and count go into `state.stateful_callbacks[STATE_KEY]` after
    every optimizer step (from the host copy: no device sync), which transformers writes into each checkpoint's
    `trainer_state.json`; a run resumed from it ranks its next pairs against the same window with the same count, so
    it distrusts the pairs the uninterrupted run would have."""

    STATE_KEY = "trl_robust.RopoStepFilter"

    def __init__(self, trainer: RobustDPOTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        saved = (state.stateful_callbacks or {}).get(self.STATE_KEY)  # present when resuming from our checkpoint
        device = self.trainer.accelerator.device
        self.trainer._step_filters = {
            loss_type: _RunningFilter(device, values["history"], values["debt"])
            for loss_type, values in (saved["attributes"] if saved else {}).items()
        }

    def on_step_end(self, args, state, control, **kwargs):
        attributes = {loss_type: running.export() for loss_type, running in self.trainer._step_filters.items()}
        state.stateful_callbacks[self.STATE_KEY] = {"args": {}, "attributes": attributes}


class _EpochFilterCallback(TrainerCallback):
    """ROPO's per-epoch filter: at the start of each epoch, decide which training rows to distrust for that epoch.

    The decision is kept in `state.stateful_callbacks[STATE_KEY]`, which transformers writes into every checkpoint's
    `trainer_state.json`, so a run resumed inside an epoch distrusts the same rows as the uninterrupted run (its
    model at the start of that epoch is gone by then) and a run resumed at an epoch boundary scores afresh with the
    same model the uninterrupted run would have used.

    With `ropo_filter_ratio="auto"` the decision at the start of epoch e uses the margins the training steps of epoch
    e − 1 recorded (`trl_robust.noise.auto`): their flip-rate estimate joins the list of estimates, and ρ follows from
    that list. The estimates, and the margins of the current epoch so far, go into the checkpoints too (written only
    when a checkpoint is about to be saved), so that a resumed run estimates from the same margins.
    """

    STATE_KEY = "trl_robust.RopoEpochFilter"

    def __init__(self, trainer: RobustDPOTrainer):
        self.trainer = trainer
        self.decided_epoch = None  # the epoch whose suspects `trainer._epoch_suspects` holds
        self.auto = filter_ratio(trainer.args) == AUTO
        self.estimates = []  # auto: ε̂ per epoch trained, oldest first (None where nothing could be estimated)
        self.margins = {}  # auto: row -> margin, of the current epoch so far (on the host)

    def on_train_begin(self, args, state, control, **kwargs):
        saved = (state.stateful_callbacks or {}).get(self.STATE_KEY)  # present when resuming from our checkpoint
        attributes = saved["attributes"] if saved else {}
        self.decided_epoch = attributes.get("epoch")
        self.trainer._set_epoch_suspects(attributes.get("rows"))
        self.estimates = list(attributes.get("estimates", []))
        self.margins = {int(row): z for row, z in zip(*attributes.get("margins", ([], [])))}
        if self.trainer._free_margins:
            self.trainer._take_free_margins()  # (a previous `train()` call's leftovers)
        if state.num_train_epochs is not None and state.num_train_epochs <= 1:
            warnings.warn(
                "ropo_filter_scope='epoch' chooses its suspects at the start of each epoch after the first, and this "
                f"run trains for {state.num_train_epochs} epoch: nothing will be filtered. Train for more epochs or "
                "use ropo_filter_scope='step'"
                + (" with a fixed ropo_filter_ratio (e.g. the flip rate `trl-robust audit` estimates)." if self.auto else "."),
                UserWarning,
                stacklevel=2,
            )

    def on_epoch_begin(self, args, state, control, **kwargs):
        position = state.epoch or 0.0
        epoch = math.floor(position + 1e-6)
        if epoch == self.decided_epoch:
            return  # resumed inside this epoch: its suspects came back with the checkpoint
        warmup = robust_hyperparameter(args, "ropo_filter_warmup_steps")
        inside_an_epoch = abs(position - round(position)) > 1e-6  # resumed mid-epoch from a checkpoint without them
        untrained = state.global_step == 0 or inside_an_epoch  # never with the untrained model
        if self.auto:
            rows = None if untrained else self._decide_from_the_last_epoch(state.global_step >= warmup)
        elif untrained or state.global_step < warmup:
            rows = None
        else:
            rows = self.trainer._choose_epoch_suspects()
        self.trainer._set_epoch_suspects(rows)
        self.decided_epoch = epoch
        self._export(state, rows)

    def _decide_from_the_last_epoch(self, filtering: bool) -> list[int] | None:
        """`auto`: estimate ε from the epoch that just ended and choose this epoch's suspects (None: filter nothing)."""
        margins = {**self.margins, **self.trainer._take_free_margins()}
        self.margins = {}
        estimate = estimate_flip_rate([margins[row] for row in sorted(margins)]) if margins else None
        self.estimates.append(estimate)
        ratio = auto_filter_ratio(self.estimates) if filtering else 0.0
        metrics = self.trainer._metrics["train"]
        if estimate is not None:
            metrics["noise/estimated_flip_rate"].append(estimate)
        metrics["noise/filter_ratio"].append(ratio)
        return self.trainer._lowest_margin_rows(margins, ratio) if ratio > 0 else None

    def _export(self, state, rows) -> None:
        attributes = {"epoch": self.decided_epoch, "rows": rows}
        if self.auto:
            attributes.update(estimates=self.estimates, margins=[list(self.margins), list(self.margins.values())])
        state.stateful_callbacks[self.STATE_KEY] = {"args": {}, "attributes": attributes}

    def _before_a_save(self, state, control) -> None:
        """`auto`: put the margins recorded so far this epoch into the checkpoint about to be written."""
        if self.auto and control.should_save:
            self.margins.update(self.trainer._take_free_margins())
            saved = state.stateful_callbacks.get(self.STATE_KEY, {}).get("attributes", {})
            self._export(state, saved.get("rows"))

    def on_step_end(self, args, state, control, **kwargs):
        self._before_a_save(state, control)  # (transformers' flow callback, earlier in the list, has set should_save)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._before_a_save(state, control)


def _with_row_index(model, ref_model, args, pargs, kwargs):
    """The trainer's arguments with a row-index column added to `train_dataset` (for the per-epoch filter).

    Checked before any model is loaded: the epoch filter needs a map-style dataset to score and index.
    """
    try:
        bound = inspect.signature(DPOTrainer.__init__).bind(None, model, ref_model, args, *pargs, **kwargs)
    except TypeError:
        return pargs, kwargs  # a call TRL will reject with its own message
    train_dataset = bound.arguments.get("train_dataset")
    if train_dataset is None:
        return pargs, kwargs
    if not isinstance(train_dataset, Dataset):
        raise ValueError(
            f"ropo_filter_scope='epoch' scores the whole training set at the start of each epoch, so it needs a "
            f"map-style `datasets.Dataset` as train_dataset, got {type(train_dataset).__name__}. Use "
            "ropo_filter_scope='step' for streamed data."
        )
    if ROW_COLUMN in train_dataset.column_names:
        raise ValueError(f"train_dataset has a column named {ROW_COLUMN!r}, which trl-robust reserves; rename it.")
    bound.arguments["train_dataset"] = train_dataset.add_column(ROW_COLUMN, np.arange(len(train_dataset), dtype=np.int64))
    return bound.args[4:], bound.kwargs


class _PassThroughCollator:
    """TRL's collator, plus the given columns as tensors (TRL's collator ignores keys it does not know)."""

    def __init__(self, collator, columns: dict):
        self.collator = collator
        self.columns = columns  # column -> dtype, shared with the trainer

    def __call__(self, examples):
        batch = self.collator(examples)
        for column, dtype in self.columns.items():
            if examples and all(column in example for example in examples):
                batch[column] = torch.tensor([example[column] for example in examples], dtype=dtype)
        return batch


def _non_finite_message(loss_type: str, mode: str, n_pairs: int, n_bad_reference: float, n_bad_margin: float) -> str:
    problems = []
    if n_bad_reference:
        problems.append(
            f"the reference log-probs of {int(n_bad_reference)} pair(s) are NaN or infinite (a reference model in "
            "float16 that overflows, a corrupt checkpoint, or NaN in precomputed `ref_chosen_logps`/"
            "`ref_rejected_logps` columns)"
        )
    if n_bad_margin:
        problems.append(
            f"the policy's log-probs of {int(n_bad_margin)} pair(s) are NaN or infinite (diverged training: lower "
            "the learning rate, or use bfloat16/float32 instead of float16)"
        )
    return f"Non-finite DPO margins in a {mode} batch of {n_pairs} pairs ({loss_type} loss): {'; and '.join(problems)}."
