#!/usr/bin/env bash
# Regenerates leaderboards/default: every registered merge method on the embedded default expert set.
#   bash leaderboards/default/regenerate.sh            (from the repository root, in the installed venv)
# Methods with a router of their own run twice (oracle, then their router); the expert bank is also evaluated
# on the perturbed variants at level 3 (one per axis) for the perturbation rows. Runs resume when re-run.
# EXPERTS picks the expert set (default: the embedded one); the v2 set adds the rows issue 13 asks for.
set -euo pipefail
EXPERTS=${EXPERTS:-}
experts_flag=()
[ -n "$EXPERTS" ] && experts_flag=(--experts "$EXPERTS")
EPISODES=${EPISODES:-5}
PERTURBED_EPISODES=${PERTURBED_EPISODES:-2}
RUNS=${RUNS:-runs/default}
mkdir -p "$RUNS"
methods=$(python -c "from vlamergebench.merge_methods.registry import METHODS; print(' '.join(METHODS.names()))")
for method in $methods; do
  routing=oracle
  if python -c "import sys; from vlamergebench.merge_methods.registry import METHODS as M; sys.exit(M.spec('$method').metadata.get('router') is None)"; then
    routing=oracle,method
  fi
  /usr/bin/time -f "$method: %e s wall" vlamergebench run --method "$method" --episodes "$EPISODES" \
    --routing "$routing" "${experts_flag[@]}" --out "$RUNS/$method" --no-progress > "$RUNS.$method.log" 2>&1 || { tail "$RUNS.$method.log"; exit 1; }
  tail -n 3 "$RUNS.$method.log"
done
vlamergebench run --method expert_bank --episodes "$PERTURBED_EPISODES" --perturbations L3 \
  --out "$RUNS/expert_bank" --no-progress > "$RUNS.expert_bank_perturbed.log" 2>&1
# Ablation: CARVE's residual rank. At the tiny width (128) the default rank 9 keeps 7% of the width, as rank 64
# does at Qwen2.5-0.5B's 896; rank 64 keeps half, which separates rank truncation from core drift.
vlamergebench run --method carve --method-config '{"rank": 64}' --episodes "$EPISODES" "${experts_flag[@]}" \
  --out "$RUNS/carve_rank64" --no-progress > "$RUNS.carve_rank64.log" 2>&1
# Ablation: MergeVLA's expert heads. Depth 1 (the LIBERO default) averages 3 of the tiny head's 4 blocks across
# experts; depth 3 keeps 3 per expert.
vlamergebench run --method mergevla --method-config '{"expert_head_depth": 3}' --episodes "$EPISODES" "${experts_flag[@]}" \
  --out "$RUNS/mergevla_head3" --no-progress > "$RUNS.mergevla_head3.log" 2>&1
# Oracle upper bound, labelled as such: the scale of TA / TIES / RobustMerge chosen on the evaluation
# episodes themselves (a data-free protocol has no validation data), one run per value.
for value in 0.3 0.5 0.7 1.0; do
  for method in ta ties; do
    vlamergebench run --method "$method" --method-config "{\"scale\": $value}" --episodes "$EPISODES" "${experts_flag[@]}" \
      --out "$RUNS/${method}_oracle_lambda_$value" --no-progress > "$RUNS.${method}_lambda_$value.log" 2>&1
  done
  vlamergebench run --method robustmerge_paper --method-config "{\"weight\": $(python -c "print(2 * $value)")}" \
    --episodes "$EPISODES" "${experts_flag[@]}" --out "$RUNS/robustmerge_paper_oracle_lambda_$value" \
    --no-progress > "$RUNS.robustmerge_paper_lambda_$value.log" 2>&1
done
# MergeVLA admitted one expert at a time (CARVE's Fig. 3a setting): the continual protocol on a one-shot method.
vlamergebench run --method mergevla --protocol continual --episodes "$EPISODES" "${experts_flag[@]}" \
  --out "$RUNS/mergevla_continual" --no-progress > "$RUNS.mergevla_continual.log" 2>&1
# The raw results are published beside the board as one bundle per run directory (store + manifest), so a new
# run joins the board without rerunning anything (docs/submitting.md):
#   vlamergebench leaderboard leaderboards/default/*.zip runs/mine --out board/
for run in "$RUNS"/*/; do
  name=$(basename "$run")
  rm -f "leaderboards/default/$name.zip"
  vlamergebench leaderboard "$run" --out "$RUNS.boards/$name" --only entries \
    --export-bundle "leaderboards/default/$name.zip" --description "default board: $name" > /dev/null
done
vlamergebench leaderboard leaderboards/default/*.zip --out leaderboards/default
