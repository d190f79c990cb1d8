#!/usr/bin/env bash
# Rerun every command whose record feeds a table of results/README.md, then render the tables.
# About 13 hours on a 2-core CPU, the sum of the records' wall times (the SmolLM2 RQ1 table an hour, its seeds and the 1,439-title seeds half an hour each and the 1,439-title 600-step rows 20 minutes, the two SmolLM2 RQ3 tables an hour and a half each and the RL baseline's an hour and a quarter, the full SmolLM2 Movies & TV and MovieLens tables two each, the longer MovieLens SFT runs 50 minutes), one command at a time (set FLOWER_LITE_LOCK to a lock file to wait for it).
#   bash results/regenerate.sh            # everything
#   bash results/regenerate.sh "rq2_quick*"  # only the records whose name matches the pattern
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
FL=".venv/bin/flower-lite"
only="${1:-}"
run() {  # run NAME COMMAND...
  local name=$1; shift
  [[ -z "$only" || "$name" == $only ]] || return 0
  echo "== $name: $*"
  if [[ -n "${FLOWER_LITE_LOCK:-}" ]]; then flock "$FLOWER_LITE_LOCK" "$@"; else "$@"; fi
}
BASE=(compare --data default --steps 600 --test-rows 128 --valid-rows 64)
R=results/records
run rq2_default "$FL" "${BASE[@]}" --out $R/rq2_default.json
# the same command over 3 seeds, pinned to the SIMD level of rq2_default's record (its seed 0 reproduces that record)
run rq2_default_seeds env ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 \
    "$FL" "${BASE[@]}" --seeds 0 1 2 --out $R/rq2_default_seeds.json
run rq2_theta_0.99 "$FL" "${BASE[@]}" --methods Flower --theta 0.99 --out $R/rq2_theta_0.99.json
run rq2_add_log_s "$FL" "${BASE[@]}" --methods Flower --variant add_log_s --out $R/rq2_add_log_s.json
run rq2_catalog "$FL" "${BASE[@]}" --methods Flower --trajectories catalog --out $R/rq2_catalog.json
run rq2_mixed "$FL" "${BASE[@]}" --methods Flower --trajectories mixed --out $R/rq2_mixed.json
run rq2_on_policy "$FL" "${BASE[@]}" --methods Flower --trajectories on_policy --out $R/rq2_on_policy.json
run rq2_db_0.9 "$FL" "${BASE[@]}" --methods Flower --loss db --theta 0.9 --out $R/rq2_db_0.9.json
run rq2_catalog_0.998 "$FL" "${BASE[@]}" --methods Flower --trajectories catalog --theta 0.998 --out $R/rq2_catalog_0.998.json
run rq2_catalog_0.999 "$FL" "${BASE[@]}" --methods Flower --trajectories catalog --theta 0.999 --out $R/rq2_catalog_0.999.json
run rq2_pop_alpha_0.5 "$FL" "${BASE[@]}" --methods Flower --pop-alpha 0.5 --out $R/rq2_pop_alpha_0.5.json
run rq2_pop_alpha_0.5_mixed "$FL" "${BASE[@]}" --methods Flower --pop-alpha 0.5 --trajectories mixed --out $R/rq2_pop_alpha_0.5_mixed.json
for s in 0 1 2 3; do
  run rq2_quick_seed$s "$FL" compare --data default --steps 60 --test-rows 422 --valid-rows 64 --seed $s \
      --methods "BIGRec (SFT)" Flower --out $R/rq2_quick_seed$s.json
done
run target_fit_seeds "$PY" results/target_fit.py --steps 300 --seeds 0 1 2 --out $R/target_fit_seeds.json
run target_fit_warm_seeds "$PY" results/target_fit.py --steps 300 --seeds 0 1 2 --warm-start --out $R/target_fit_warm_seeds.json
run rq2_movies "$FL" compare --data Movies_and_TV --steps 300 --train-rows 2000 --test-rows 100 --valid-rows 64 \
    --out $R/rq2_movies.json
run rq2_smollm2_movielens "$FL" compare --model smollm2 --data movielens --train-rows 5000 --valid-rows 200 \
    --test-rows 1000 --steps 300 --objectives distill db db:0.9,0.99,0.995 --out $R/rq2_smollm2_movielens.json
for steps in 900 1800; do  # BIGRec (SFT) against popularity with longer training
  run rq2_smollm2_movielens_sft$steps "$FL" compare --model smollm2 --data movielens --train-rows 5000 --valid-rows 200 \
      --test-rows 1000 --steps $steps --methods popularity "BIGRec (SFT)" --out $R/rq2_smollm2_movielens_sft$steps.json
done
run rq2_smollm2_movies "$FL" compare --model smollm2 --data Movies_and_TV --train-rows 5000 --valid-rows 200 \
    --test-rows 1000 --steps 300 --objectives distill db db:0.9,0.99,0.995 --out $R/rq2_smollm2_movies.json
run rq2_smollm2_seeds "$FL" compare --model smollm2 --data Movies_and_TV --train-rows 600 --valid-rows 50 \
    --test-rows 100 --steps 40 --methods popularity SASRec "BIGRec (SFT)" Flower --objectives db:0.99 --seeds 0 1 2 \
    --out $R/rq2_smollm2_seeds.json
run rq3_tiny "$PY" results/rq3_table.py --data default --train-rows 1200 --valid-rows 32 --test-rows 128 --steps 300 \
    --align-steps 100 --align-lr 0.003 --out $R/rq3_tiny.json
run rq3_smollm2_movies "$PY" results/rq3_table.py --model smollm2 --data Movies_and_TV --train-rows 5000 --valid-rows 200 \
    --test-rows 400 --steps 300 --objectives db --align-rows 1000 --align-lr 3e-4 --aligners S-DPO "DMPO (as coded)" RosePO \
    --out $R/rq3_smollm2_movies.json
run rq3_smollm2_movies_rloo "$PY" results/rq3_table.py --model smollm2 --data Movies_and_TV --train-rows 5000 \
    --valid-rows 200 --test-rows 400 --steps 300 --objectives db --align-rows 1000 --align-lr 3e-4 --aligners RLOO \
    --out $R/rq3_smollm2_movies_rloo.json
run rq3_smollm2_movielens "$PY" results/rq3_table.py --model smollm2 --data movielens --train-rows 5000 --valid-rows 200 \
    --test-rows 400 --steps 300 --objectives db --align-rows 1000 --align-lr 3e-4 --aligners S-DPO "DMPO (as coded)" RosePO \
    --out $R/rq3_smollm2_movielens.json
run rq1_stops_smollm2 "$PY" results/rq1_table.py --model smollm2 --stops --out $R/rq1_stops_smollm2.json
run rq1_stops_tiny "$PY" results/rq1_table.py --model tiny --stops --out $R/rq1_stops_tiny.json
run rq1_tiny "$PY" results/rq1_table.py --model tiny --steps 200 --out $R/rq1_tiny.json
run rq1_tiny_seeds "$PY" results/rq1_table.py --model tiny --steps 200 --seeds 0 1 2 --no-warm \
    --rows initial sft "subtb (Flower as published)" "sft+subtb θ=0.995" db distill dpo rloo --out $R/rq1_tiny_seeds.json
run rq1_smollm2 "$PY" results/rq1_table.py --model smollm2 --steps 200 --out $R/rq1_smollm2.json
run rq1_smollm2_seeds "$PY" results/rq1_table.py --model smollm2 --steps 200 --seeds 0 1 2 --no-warm \
    --rows initial sft "subtb (Flower as published)" "sft+subtb θ=0.995" db distill dpo rloo --out $R/rq1_smollm2_seeds.json
run rq1_smollm2_movies1439 "$PY" results/rq1_table.py --model smollm2 --data movies1439 --steps 200 --seeds 0 1 2 --no-warm \
    --rows initial sft "subtb (Flower as published)" "sft+subtb θ=0.995" "subtb_exact (stop terms held out)" db distill dpo \
    --out $R/rq1_smollm2_movies1439.json
run rq1_smollm2_movies1439_600 "$PY" results/rq1_table.py --model smollm2 --data movies1439 --steps 600 --seeds 0 1 2 \
    --no-warm --rows db "subtb_exact (stop terms held out)" --out $R/rq1_smollm2_movies1439_600.json
run rq2_check "$FL" compare --steps 30 --train-rows 400 --valid-rows 16 --test-rows 32 --out $R/rq2_check.json
"$PY" results/tables.py
