#!/usr/bin/env bash
# Regenerates leaderboards/default: every registered merge method on the embedded default expert set.
#   bash leaderboards/default/regenerate.sh            (from the repository root, in the installed venv)
#
# Each entry is one run directory under $RUNS. When its run finishes, its raw results are published beside the
# board as one bundle (store + manifest, a few KB): leaderboards/default/<entry>.zip. An entry whose bundle is
# already there is skipped, so the regeneration resumes from the committed bundles on any machine, in as many
# sittings as it takes (commit the new bundles after each sitting); delete a bundle to rerun its entry. Each
# entry's wall time is appended to regenerate_times.tsv. A new run joins the board without rerunning anything:
#   vlamergebench leaderboard leaderboards/default/*.zip runs/mine --out board/
#
# Methods with a router of their own run twice (oracle, then their router); the expert bank also runs on the
# perturbed variants at level 3 (one per axis) for the perturbation rows, and records its first episode of every
# task (the page's strip of rollout thumbnails; the posters travel in the bundle, the MP4s stay in $RUNS).
# EXPERTS picks the expert set (default: the embedded one). ENTRIES (names separated by spaces) runs only those
# entries, for splitting a regeneration across machines or choosing what a short sitting computes; the board is
# then rebuilt only when every entry is published.
set -euo pipefail
ENTRIES=${ENTRIES:-}
EXPERTS=${EXPERTS:-}
experts_flag=()
[ -n "$EXPERTS" ] && experts_flag=(--experts "$EXPERTS")
EPISODES=${EPISODES:-10}
PERTURBED_EPISODES=${PERTURBED_EPISODES:-2}
# Run directories are per expert set: a store holding another set's runs would publish them in the bundle.
set_id=$(python -c "import sys; from vlamergebench.eval.run import DEFAULT_EXPERTS as D; from vlamergebench.policies.checkpoint import ExpertSet; print(ExpertSet.open(sys.argv[1] or D).id)" "$EXPERTS")
RUNS=${RUNS:-runs/default-$set_id}
BOARD=${BOARD:-leaderboards/default}
mkdir -p "$RUNS" "$BOARD"
unpublished=()

# entry NAME RUN-ARGUMENTS...: run `vlamergebench run` into $RUNS/NAME unless NAME's bundle is published; then
# publish it. Extra runs into the same directory (the perturbed expert bank) go in $EXTRA_RUN before the call.
entry() {
  local name=$1
  shift
  local bundle="$BOARD/$name.zip" log="$RUNS/$name.log" started
  if [ -f "$bundle" ]; then
    echo "$name: published already ($bundle)"
    return 0
  fi
  if [ -n "$ENTRIES" ]; then
    case " $ENTRIES " in *" $name "*) ;; *) unpublished+=("$name"); return 0 ;; esac
  fi
  started=$(date +%s)
  vlamergebench run "$@" --episodes "$EPISODES" "${experts_flag[@]}" --out "$RUNS/$name" --no-progress \
    > "$log" 2>&1 || { tail "$log"; exit 1; }
  if [ -n "${EXTRA_RUN:-}" ]; then
    vlamergebench run $EXTRA_RUN "${experts_flag[@]}" --out "$RUNS/$name" --no-progress >> "$log" 2>&1 \
      || { tail "$log"; exit 1; }
  fi
  vlamergebench leaderboard "$RUNS/$name" --out "$RUNS/$name.board" --only entries \
    --export-bundle "$bundle" --description "default board: $name" > /dev/null
  printf '%s\t%s\t%s\n' "$name" "$(( $(date +%s) - started ))" "$(date -u +%FT%TZ)" >> "$BOARD/regenerate_times.tsv"
  tail -n 3 "$log"
}

# method_entry METHOD: the registered method under its defaults (and under its own router when it has one).
method_entry() {
  local method=$1 routing=oracle
  if python -c "import sys; from vlamergebench.merge_methods.registry import METHODS as M; sys.exit(M.spec('$method').metadata.get('router') is None)"; then
    routing=oracle,method
  fi
  if [ "$method" = expert_bank ]; then
    EXTRA_RUN="--method expert_bank --episodes $PERTURBED_EPISODES --perturbations L3" \
      entry "$method" --method "$method" --routing "$routing" --record-videos 1
  else
    entry "$method" --method "$method" --routing "$routing"
  fi
}

# The rows the README's table of published findings rests on come first, so a partial regeneration already
# answers it: the banks and the base, the collapse of single-model merges, MergeVLA and CARVE with the rows
# that localise their failures.
first="expert_bank lora_bank base ta ties dare mergevla mergevla_ties carve carve_vlm ta_own_head ta_own_vlm mergevla_own_head mergevla_own_vlm"
# Then the rest of the first release's fifteen methods, so that the board covers them before the later ones.
first="$first ties_per_tensor dare_ties consensus_ta consensus_ties robustmerge robustmerge_paper"
for method in $first; do
  method_entry "$method"
done
# MergeVLA admitted one expert at a time (CARVE's Fig. 3a setting): the continual protocol on a one-shot method.
entry mergevla_continual --method mergevla --protocol continual
# Ablation: MergeVLA's expert heads: none (the whole action expert averaged, the paper's "w/o expert head"),
# and depth 3 (3 blocks per expert; depth 1 is the LIBERO default).
entry mergevla_no_heads --method mergevla --method-config '{"expert_heads": false}'
entry mergevla_head3 --method mergevla --method-config '{"expert_head_depth": 3}'
# Oracle upper bound, labelled as such: the scale of TA / TIES / RobustMerge chosen on the evaluation
# episodes themselves (a data-free protocol has no validation data), one run per value. lambda = 1 is each
# method's default entry above (the same config, so the same run): the findings board reads the sweep from both.
for value in 0.3 0.5 0.7; do
  for method in ta ties; do
    entry "${method}_oracle_lambda_$value" --method "$method" --method-config "{\"scale\": $value}"
  done
  entry "robustmerge_paper_oracle_lambda_$value" --method robustmerge_paper \
    --method-config "{\"weight\": $(python -c "print(2 * $value)")}"
done
# Then every other registered method: the one-shot ones first (MergeVLA's table of merged task vectors among
# them), the continual ones last, as they cost about 2.5 times as much (each admission re-evaluates the seen suites).
for kind in one_shot continual; do
  methods=$(python -c "from vlamergebench.merge_methods.registry import METHODS as M; print(' '.join(n for n in M.names() if M.spec(n).metadata['kind'] == '$kind'))")
  for method in $methods; do
    case " $first " in *" $method "*) continue ;; esac
    method_entry "$method"
  done
done
# Ablation: CARVE's residual rank. At the tiny width (128) the default rank 9 keeps 7% of the width, as rank 64
# does at Qwen2.5-0.5B's 896; rank 64 keeps half, which separates rank truncation from core drift.
entry carve_rank64 --method carve --method-config '{"rank": 64}'
if [ ${#unpublished[@]} -gt 0 ]; then
  echo "not run (not in ENTRIES): ${unpublished[*]}; the board is rebuilt once every entry is published"
  exit 0
fi
vlamergebench leaderboard "$BOARD"/*.zip --out "$BOARD"
