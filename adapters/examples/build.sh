#!/usr/bin/env bash
# Rebuild the example adapters, their reports and the comparison table, exactly as shipped.
# Run from the repository root after `make install`:  bash adapters/examples/build.sh
# CPU, 2 cores: about 3 hours in all (the training runs dominate). Stages can be run alone:
#   bash adapters/examples/build.sh data | harmless | concise | baselines | reports | shortcut
set -euo pipefail

PAIRS=${PAIRS:-../shared/data/hh-rlhf-harmless/pairs.jsonl}  # HH-RLHF harmless-base, chat form
WORK=${WORK:-build/examples}                                # what is not shipped: train split, baselines
EXAMPLES=adapters/examples
DATA=$EXAMPLES/data
BIN=.venv/bin
export HF_HUB_OFFLINE=1 PYTHONPATH=.
mkdir -p "$WORK" "$DATA"

# Shared by every run on the harmless data, so the comparison differs only in the method.
HARMLESS_RUN=(--data "$WORK/harmless-train.jsonl" --skip-bad --max-steps 100 --max-length 192 --lr 5e-4 --seed 0)

data() {
    $BIN/python $EXAMPLES/split_pairs.py "$PAIRS" --held-out 0.1 --seed 0 \
        --train "$WORK/harmless-train.jsonl" --test "$DATA/harmless-test.jsonl"
    $BIN/python $EXAMPLES/build_concise_pairs.py --prompts-from "$WORK/harmless-train.jsonl" --seed 0 \
        --train "$DATA/concise-train.jsonl" --test "$DATA/concise-test.jsonl"
}

harmless() {
    rm -rf "$EXAMPLES/harmless"
    $BIN/qadapter train "${HARMLESS_RUN[@]}" --out "$EXAMPLES/harmless" --name harmless \
        --description "Prefers harmless answers (trained on HH-RLHF harmless-base pairs)" \
        --alpha 5 --omega 4 --beta 1e-4 --reward-norm padded
}

concise() {
    rm -rf "$EXAMPLES/concise"
    $BIN/qadapter train --data "$DATA/concise-train.jsonl" --out "$EXAMPLES/concise" --name concise \
        --description "Prefers shorter answers (pairs of sampled base answers, the shorter chosen)" \
        --epochs 2 --max-length 256 --lr 5e-4 --seed 0 --value-position same
}

baselines() {
    for method in sft dpo; do
        rm -rf "$WORK/harmless-$method"
        $BIN/qadapter train "${HARMLESS_RUN[@]}" --method "$method" --out "$WORK/harmless-$method" --name "harmless-$method"
    done
}

reports() {
    local test="$DATA/harmless-test.jsonl"
    $BIN/qadapter eval --adapter base --data "$test" --skip-bad --max-length 192 --json > "$WORK/base.eval.json"
    $BIN/qadapter eval --adapter "$EXAMPLES/harmless" --data "$test" --skip-bad --max-length 192 --json \
        > "$EXAMPLES/harmless/eval.json"
    for method in sft dpo; do
        $BIN/qadapter eval --adapter "$WORK/harmless-$method" --data "$test" --skip-bad --max-length 192 --json \
            > "$WORK/harmless-$method.eval.json"
    done
    $BIN/qadapter eval --adapter "$EXAMPLES/concise" --data "$DATA/concise-test.jsonl" --max-length 256 --json \
        > "$EXAMPLES/concise/eval.json"
    $BIN/python $EXAMPLES/compare.py "$WORK/base.eval.json" "$EXAMPLES/harmless/eval.json" \
        "$WORK/harmless-sft.eval.json" "$WORK/harmless-dpo.eval.json" > "$EXAMPLES/comparison.md"
    cat "$EXAMPLES/comparison.md"
}

# Per pair: how far each ranking is "the shorter response wins" (the README's analysis of the table).
shortcut() {
    $BIN/python $EXAMPLES/length_shortcut.py --data "$DATA/harmless-test.jsonl" \
        --adapter base "$EXAMPLES/harmless" "$WORK/harmless-dpo" "$WORK/harmless-sft" > "$EXAMPLES/length_shortcut.jsonl"
    cat "$EXAMPLES/length_shortcut.jsonl"
}

if [ $# -eq 0 ]; then
    data; harmless; concise; baselines; reports; shortcut
else
    for stage in "$@"; do "$stage"; done
fi
