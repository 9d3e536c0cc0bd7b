#!/usr/bin/env bash
# Clean-and-retrain (README, "Clean and retrain"): train with a robust loss on the noisy data, audit the training split
# with that policy, drop (or swap) its most suspicious pairs, and retrain on what is left.
#
#   bash recipes/clean_and_retrain.sh          # offline, ~1 min on a CPU: built-in tiny model and data, 25% flipped
#                                              # (a smoke test of the workflow: the tiny model's audit is near chance)
#
#   MODEL=Qwen/Qwen2.5-0.5B-Instruct DATA=my-org/prefs FLIP_RATE=0 OUT=runs/clean \
#   TRAIN_CONFIG=recipes/ropo.yaml RETRAIN_CONFIG=recipes/ropo.yaml RETRAIN_ARGS="--loss_type sigmoid" \
#   bash recipes/clean_and_retrain.sh          # your model and data (real noise: FLIP_RATE=0)
#
# Settings (environment variables, with their defaults):
#   MODEL=builtin:tiny           the starting (SFT) model: the reference of both trainings and of the audit
#   DATA=builtin:tiny            the preference data (`--dataset_name`); its `train` split is trained on and audited
#   FLIP_RATE=0.25 FLIP_SEED=0   label noise injected into the training split (`--flip_rate`), so the audit can be
#                                scored against the flip record; the audit flips the same pairs. 0 = the data as is
#   BETA=0.1                     β of the first training (the audit needs the same β)
#   CLEAN_SHARE=0.2              share of the most suspicious pairs to clean; keep it at or below the share of labels
#                                you believe wrong (on the synthetic benchmark, retraining DPO without the top 20% was
#                                level with early-stopped DPO at 20-40% flips: README, noise benchmark)
#   CLEAN_MODE=drop              `drop` the suspects, or `swap` their chosen and rejected
#   TRAIN_CONFIG, RETRAIN_CONFIG recipes for the two trainings [recipes/tiny_offline.yaml, a ROPO recipe]
#   RETRAIN_ARGS                 extra arguments of the retraining ["--loss_type sigmoid --eval_strategy no": plain
#                                DPO, as measured; the cleaned directory has only a train split]
#   OUT=clean-and-retrain        where the three steps write: robust/, audit/ (audit/cleaned/train.jsonl), retrained/
#   TRL_ROBUST                   the command [`trl-robust` on PATH, else the checkout's .venv/bin/trl-robust, which
#                                `make test` or `make demo` creates]
set -euo pipefail

RECIPES="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODEL="${MODEL:-builtin:tiny}"
DATA="${DATA:-builtin:tiny}"
FLIP_RATE="${FLIP_RATE:-0.25}"
FLIP_SEED="${FLIP_SEED:-0}"
BETA="${BETA:-0.1}"
CLEAN_SHARE="${CLEAN_SHARE:-0.2}"
CLEAN_MODE="${CLEAN_MODE:-drop}"
TRAIN_CONFIG="${TRAIN_CONFIG:-$RECIPES/tiny_offline.yaml}"
RETRAIN_CONFIG="${RETRAIN_CONFIG:-$TRAIN_CONFIG}"
RETRAIN_ARGS="${RETRAIN_ARGS:---loss_type sigmoid --eval_strategy no}"
OUT="${OUT:-clean-and-retrain}"

if [ -d "$OUT" ] && [ -n "$(ls -A "$OUT")" ]; then
    echo "clean_and_retrain.sh: $OUT already holds files; choose another OUT=... (nothing was changed)" >&2
    exit 2
fi

# The README runs this script from a fresh checkout set up by `make test` / `make demo`, where the command lies in
# .venv/bin and the virtualenv is not activated.
CHECKOUT="$(cd "$RECIPES/.." && pwd)"
if [ -z "${TRL_ROBUST:-}" ]; then
    if command -v trl-robust >/dev/null 2>&1; then
        TRL_ROBUST=trl-robust
    elif [ -x "$CHECKOUT/.venv/bin/trl-robust" ]; then
        TRL_ROBUST="$CHECKOUT/.venv/bin/trl-robust"
    else
        echo "clean_and_retrain.sh: trl-robust not found on PATH nor in $CHECKOUT/.venv/bin; run \`make test\`" \
            "in the checkout, activate the virtualenv that has trl-robust, or set TRL_ROBUST=/path/to/trl-robust" >&2
        exit 127
    fi
elif ! command -v "$TRL_ROBUST" >/dev/null 2>&1; then
    echo "clean_and_retrain.sh: TRL_ROBUST=$TRL_ROBUST is not a command; unset it or point it at trl-robust" >&2
    exit 127
fi

SMOKE_TEST=""
if [ "$MODEL" = "builtin:tiny" ] && [ "$DATA" = "builtin:tiny" ]; then
    SMOKE_TEST="Note: with the built-in tiny model and data (the default) this is a smoke test of the workflow, not a
cleaning: the tiny policy's audit is near chance (AUROC about 0.5), so the cleaned split is about as noisy as the
input. Set MODEL and DATA (see the top of this script) for a real run."
    echo "$SMOKE_TEST"
fi

echo "== 1/3: train with the robust loss of $TRAIN_CONFIG on $DATA (flip rate $FLIP_RATE)"
"$TRL_ROBUST" dpo --config "$TRAIN_CONFIG" --model_name_or_path "$MODEL" --dataset_name "$DATA" --beta "$BETA" \
    --flip_rate "$FLIP_RATE" --flip_seed "$FLIP_SEED" --output_dir "$OUT/robust"

echo "== 2/3: audit the training split with that policy; $CLEAN_MODE the top $CLEAN_SHARE"
"$TRL_ROBUST" audit --model_name_or_path "$OUT/robust" --ref_model "$MODEL" --dataset_name "$DATA" --beta "$BETA" \
    --flip_rate "$FLIP_RATE" --flip_seed "$FLIP_SEED" --clean_share "$CLEAN_SHARE" --clean_mode "$CLEAN_MODE" \
    --output_dir "$OUT/audit"

echo "== 3/3: retrain on the cleaned data"
# shellcheck disable=SC2086  # RETRAIN_ARGS is a list of arguments
"$TRL_ROBUST" dpo --config "$RETRAIN_CONFIG" --model_name_or_path "$MODEL" --dataset_name "$OUT/audit/cleaned" \
    --output_dir "$OUT/retrained" $RETRAIN_ARGS

echo "Done: the audit in $OUT/audit/summary.md, the retrained model in $OUT/retrained"
if [ -n "$SMOKE_TEST" ]; then
    echo "$SMOKE_TEST"
fi
