#!/usr/bin/env bash
# Rebuild the example adapters, their reports and the comparison tables, exactly as shipped.
# Run from the repository root after `make install`:  bash experiments/build.sh
# Stages can be run alone:
#   bash experiments/build.sh data | harmless | concise | baselines | reports | frontier | shortcut | longer | recipe | protocol
# `harmless`, `longer`, `recipe` and `protocol` are sized for a GPU: minutes each on an H100 or H200, hours on 2
# CPU cores (the shipped ones ran on a GPU). The other stages took about 4 hours on 2 CPU cores (`reports`
# runs the hour-long `frontier` sweep).
set -euo pipefail

PAIRS=${PAIRS:-../shared/data/hh-rlhf-harmless/pairs.jsonl}  # HH-RLHF harmless-base, chat form
WORK=${WORK:-build/examples}                                # what is not shipped: splits, baselines, runs
EXAMPLES=adapters/examples      # the shipped adapters and their data
EXPERIMENTS=experiments         # these scripts and their result files
DATA=$EXAMPLES/data
BIN=.venv/bin
export HF_HUB_OFFLINE=1
export TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1  # on a GPU, TF32 matmuls as in the shipped runs; no effect on CPU
mkdir -p "$WORK" "$DATA"

# The short runs of the first comparison: 800 pairs each (100 steps × 8), sized for 2 CPU cores.
SHORT_RUN=(--data "$WORK/harmless-train.jsonl" --skip-bad --max-steps 100 --max-length 192 --lr 5e-4 --seed 0)
# The longer runs and the shipped `harmless`: epochs over the train split less a validation split;
# each run names its epochs, batch size, learning rate and seed.
LONG_RUN=(--data "$WORK/harmless-fit.jsonl" --eval-data "$WORK/harmless-val.jsonl" --skip-bad
          --grad-accum 1 --max-length 192 --dtype float32)
# The Q-adapter objective of the longer runs: α 5, ω 4, a light χ² term; PER_TOKEN adds the
# per-token reward (V at s_t, R divided by the response length) that the shipped `harmless` uses.
QADAPTER=(--alpha 5 --omega 4 --beta 1e-4)
PER_TOKEN=(--value-position same --reward-norm length)
HARMLESS_DESCRIPTION="Prefers harmless answers (trained on HH-RLHF harmless-base pairs)"

data() {
    $BIN/python $EXPERIMENTS/split_pairs.py "$PAIRS" --held-out 0.1 --seed 0 \
        --train "$WORK/harmless-train.jsonl" --test "$DATA/harmless-test.jsonl"
    $BIN/python $EXPERIMENTS/split_pairs.py "$WORK/harmless-train.jsonl" --held-out 0.1 --seed 1 \
        --train "$WORK/harmless-fit.jsonl" --test "$WORK/harmless-val.jsonl"
    $BIN/python $EXPERIMENTS/build_concise_pairs.py --prompts-from "$WORK/harmless-train.jsonl" --seed 0 \
        --train "$DATA/concise-train.jsonl" --test "$DATA/concise-test.jsonl"
    # More held-out pairs (≥ 100 in all) from the next 260 prompts of the same order: none is a training prompt.
    $BIN/python $EXPERIMENTS/build_concise_pairs.py --prompts-from "$WORK/harmless-train.jsonl" --seed 0 \
        --skip-prompts 240 --num-prompts 260 --held-out 1 --test "$WORK/concise-test-more.jsonl"
    cat "$WORK/concise-test-more.jsonl" >> "$DATA/concise-test.jsonl"
}

# Trained with α 5, ω 4 and served with α 20, ω 19: the same learned reward, a gentler policy.
# The recipe (6 epochs, lr 1e-3) is the `recipe` stage's.
harmless() {
    rm -rf "$EXAMPLES/harmless"
    $BIN/qadapter train "${LONG_RUN[@]}" --epochs 6 --batch-size 8 --lr 1e-3 --seed 0 --out "$EXAMPLES/harmless" \
        --name harmless --description "$HARMLESS_DESCRIPTION" "${QADAPTER[@]}" "${PER_TOKEN[@]}" \
        --serve-alpha 20 --serve-omega 19
}

concise() {
    rm -rf "$EXAMPLES/concise"
    $BIN/qadapter train --data "$DATA/concise-train.jsonl" --out "$EXAMPLES/concise" --name concise \
        --description "Prefers shorter answers (pairs of sampled base answers, the shorter chosen)" \
        --epochs 2 --max-length 256 --lr 5e-4 --seed 0 --value-position same
}

# The short runs: a Q-adapter (summed reward, V at s_{t+1}), SFT and DPO, trained alike.
baselines() {
    rm -rf "$WORK/harmless-100" "$WORK/harmless-sft" "$WORK/harmless-dpo"
    $BIN/qadapter train "${SHORT_RUN[@]}" --out "$WORK/harmless-100" "${QADAPTER[@]}" --reward-norm padded
    for method in sft dpo; do
        $BIN/qadapter train "${SHORT_RUN[@]}" --method "$method" --out "$WORK/harmless-$method"
    done
}

reports() {
    local test="$DATA/harmless-test.jsonl"
    $BIN/qadapter eval --adapter base --data "$test" --skip-bad --max-length 192 --json > "$WORK/base.eval.json"
    # The shipped reports see every held-out pair whole (eval's default --max-length); harmless's is the
    # strength-1 point (as shipped) of its frontier.
    frontier
    for run in harmless-100 harmless-sft harmless-dpo; do
        $BIN/qadapter eval --adapter "$WORK/$run" --data "$test" --skip-bad --max-length 192 --json > "$WORK/$run.eval.json"
    done
    $BIN/qadapter eval --adapter "$EXAMPLES/concise" --data "$DATA/concise-test.jsonl" --json > "$EXAMPLES/concise/eval.json"
    $BIN/python $EXPERIMENTS/compare.py "$WORK/base.eval.json" "$WORK/harmless-100.eval.json" \
        "$WORK/harmless-sft.eval.json" "$WORK/harmless-dpo.eval.json" > "$EXPERIMENTS/comparison.md"
    cat "$EXPERIMENTS/comparison.md"
}

# Per pair: how far each short run's ranking is "the shorter response wins" (the research log's analysis, experiments/README.md).
shortcut() {
    $BIN/python $EXPERIMENTS/length_shortcut.py --data "$DATA/harmless-test.jsonl" \
        --adapter base "$WORK/harmless-100" "$WORK/harmless-dpo" "$WORK/harmless-sft" > "$EXPERIMENTS/length_shortcut.jsonl"
    cat "$EXPERIMENTS/length_shortcut.jsonl"
}

# 2 and 4 epochs, chosen on the validation split and compared on the held-out one; the 4-epoch
# Q-adapter also served at α 20 and 10 (run `reports` first for the base's report). About 2.5 min
# per run on an H100.
longer() {
    local runs=$WORK/longer test="$DATA/harmless-test.jsonl" run alpha
    rm -rf "$runs"; mkdir -p "$runs"
    local flags=("${LONG_RUN[@]}" --batch-size 8 --lr 5e-4 --seed 0)
    $BIN/qadapter train "${flags[@]}" --epochs 2 --out "$runs/qa-padded-2ep" "${QADAPTER[@]}" --reward-norm padded
    $BIN/qadapter train "${flags[@]}" --epochs 2 --out "$runs/qa-length-2ep" "${QADAPTER[@]}" "${PER_TOKEN[@]}"
    $BIN/qadapter train "${flags[@]}" --epochs 4 --out "$runs/qa-length-4ep" "${QADAPTER[@]}" "${PER_TOKEN[@]}"
    $BIN/qadapter train "${flags[@]}" --epochs 2 --out "$runs/sft-2ep" --method sft
    $BIN/qadapter train "${flags[@]}" --epochs 2 --out "$runs/dpo-2ep" --method dpo
    local names=(qa-padded-2ep qa-length-2ep qa-length-4ep sft-2ep dpo-2ep) reports=("$WORK/base.eval.json")
    for run in "${names[@]}"; do
        $BIN/qadapter eval --adapter "$runs/$run" --data "$test" --skip-bad --max-length 192 --json > "$runs/$run.eval.json"
        reports+=("$runs/$run.eval.json")
    done
    for alpha in 20 10; do  # the same weights, served gentler: what the reward keeps, what the policy gives back
        $BIN/qadapter eval --adapter "$runs/qa-length-4ep" --alpha $alpha --omega $((alpha - 1)) --data "$test" \
            --skip-bad --max-length 192 --json > "$runs/qa-length-4ep-alpha$alpha.eval.json"
        reports+=("$runs/qa-length-4ep-alpha$alpha.eval.json")
    done
    $BIN/python $EXPERIMENTS/compare.py "${reports[@]}" > "$EXPERIMENTS/longer_runs.md"
    $BIN/python $EXPERIMENTS/length_shortcut.py --data "$test" --adapter base "${names[@]/#/$runs/}" \
        > "$EXPERIMENTS/longer_runs_shortcut.jsonl"
    $BIN/python $EXPERIMENTS/alpha_sweep.py --dtype float32 --alphas 20 10 --adapter "$runs/qa-length-4ep" --data test="$test" \
        > "$EXPERIMENTS/longer_runs_served.jsonl"
    cat "$EXPERIMENTS/longer_runs.md" "$EXPERIMENTS/longer_runs_shortcut.jsonl" "$EXPERIMENTS/longer_runs_served.jsonl"
}

# Longer and stronger runs than `longer`, each served at several α and ranked on the validation and
# held-out splits: the recipe of the shipped `harmless` (6 epochs, lr 1e-3; run `harmless` first),
# and the same recipe with other seeds. About 5 min on an H200 with the runs side by side.
recipe() {
    local runs=$WORK/recipe seed
    rm -rf "$runs"; mkdir -p "$runs"
    for seed in 0 1; do
        $BIN/qadapter train "${LONG_RUN[@]}" --epochs 6 --batch-size 8 --lr 5e-4 --seed $seed \
            --out "$runs/qa-6ep-lr5e-4-seed$seed" "${QADAPTER[@]}" "${PER_TOKEN[@]}"
    done
    for seed in 1 2 3; do
        $BIN/qadapter train "${LONG_RUN[@]}" --epochs 6 --batch-size 8 --lr 1e-3 --seed $seed \
            --out "$runs/qa-6ep-lr1e-3-seed$seed" "${QADAPTER[@]}" "${PER_TOKEN[@]}"
    done
    $BIN/qadapter train "${LONG_RUN[@]}" --epochs 8 --batch-size 16 --lr 7e-4 --seed 0 \
        --out "$runs/qa-8ep-batch16" "${QADAPTER[@]}" "${PER_TOKEN[@]}"
    $BIN/qadapter train "${LONG_RUN[@]}" --epochs 8 --batch-size 16 --lr 7e-4 --seed 0 \
        --out "$runs/qa-8ep-batch16-alpha20" --alpha 20 --omega 19 --beta 1e-4 "${PER_TOKEN[@]}"
    $BIN/python $EXPERIMENTS/alpha_sweep.py --dtype float32 --alphas 5 10 20 40 --adapter "$EXAMPLES/harmless" "$runs"/qa-* \
        --data val="$WORK/harmless-val.jsonl" test="$DATA/harmless-test.jsonl" > "$EXPERIMENTS/recipe_sweep.jsonl"
    # The base's own ranking of the validation pairs, beside its held-out one in the reports.
    $BIN/python $EXPERIMENTS/length_shortcut.py --dtype float32 --data "$WORK/harmless-val.jsonl" --adapter base \
        > "$EXPERIMENTS/recipe_base_validation.jsonl"
    cat "$EXPERIMENTS/recipe_sweep.jsonl" "$EXPERIMENTS/recipe_base_validation.jsonl"
}

# The shipped `harmless` served along its strength line (1: as shipped, α 20; 4: as trained, α 5) on
# the test pairs and the test prompt and question sets: docs/frontier/ (the README's figure). About
# an hour on 2 CPU cores. Its strength-1 point is the adapter's eval.json.
frontier() {
    $BIN/qadapter eval --adapter "$EXAMPLES/harmless" --data "$DATA/harmless-test.jsonl" --skip-bad --split test \
        --sweep 1,2,4 --out docs/frontier
    $BIN/python -c 'import json, sys; runs = json.load(open(sys.argv[1]))["runs"][sys.argv[2]]
print(json.dumps(next(r for r in runs if r["strength"] == 1)))' \
        docs/frontier/frontier.json "$EXAMPLES/harmless" > "$EXAMPLES/harmless/eval.json"
}

# The protocol of docs/protocol.md: a Q-adapter, DPO and SFT trained alike (the `harmless` recipe) with
# SEEDS, swept over one fixed strength grid on the validation pairs and sets and on the test ones; the
# strengths are chosen on validation (matched KL) and the test sweep is read at them only. Sized for a
# GPU (9 runs of 6 epochs). EVAL_FLAGS are added to both sweeps; a CPU smoke run of the same commands
# (about 40 min on 2 CPU cores, not a result): SEEDS=0 STEPS=1 EVAL_FLAGS="--limit 4 --neutral-prompts FEW.txt --questions FEW.jsonl".
protocol() {
    local runs=$WORK/protocol seed method adapters=() eval_flags
    read -r -a eval_flags <<< "${EVAL_FLAGS:-}"
    local budget=(--epochs 6) grid=0.1,0.25,0.5,1,2,4
    [ -n "${STEPS:-}" ] && budget=(--max-steps "$STEPS")
    rm -rf "$runs"; mkdir -p "$runs"
    for seed in ${SEEDS:-0 1 2}; do
        local flags=("${LONG_RUN[@]}" "${budget[@]}" --batch-size 8 --lr 1e-3 --seed "$seed")
        $BIN/qadapter train "${flags[@]}" --out "$runs/qadapter-$seed" --name qadapter "${QADAPTER[@]}" \
            "${PER_TOKEN[@]}" --serve-alpha 20 --serve-omega 19
        for method in dpo sft; do
            $BIN/qadapter train "${flags[@]}" --method "$method" --out "$runs/$method-$seed" --name "$method"
        done
        adapters+=("$runs/qadapter-$seed" "$runs/dpo-$seed" "$runs/sft-$seed")
    done
    $BIN/qadapter eval --dtype float32 --adapter "${adapters[@]}" --data "$WORK/harmless-val.jsonl" --skip-bad \
        "${eval_flags[@]}" --split validation --sweep $grid --out "$runs/validation"
    $BIN/qadapter eval --dtype float32 --adapter "${adapters[@]}" --data "$DATA/harmless-test.jsonl" --skip-bad \
        "${eval_flags[@]}" --split test --sweep $grid --out "$runs/test"
    $BIN/python $EXPERIMENTS/protocol.py --validation "$runs/validation/frontier.json" \
        --test "$runs/test/frontier.json" > "$runs/protocol.md"
    cat "$runs/protocol.md"
}

if [ $# -eq 0 ]; then
    data; harmless; concise; baselines; reports; shortcut; longer; recipe; protocol
else
    for stage in "$@"; do "$stage"; done
fi
