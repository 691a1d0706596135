#!/usr/bin/env bash
# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
#
# The one prepared GPU run: every benchmark configuration in sequence, each under its own `timeout`, the
# whole suite inside SUITE_BUDGET_S seconds (default 420, compile warm-ups included). A failing or timed-out
# configuration is recorded and the suite goes on. Results: $OUT/results.json (all configurations, rewritten after
# each one) and $OUT/suite.log (everything printed). Without $OUT they go to outputs/benchmarks/ (git-ignored).
#
#   bash benchmarks/gpu_suite.sh                  # from the repository root, on the GPU machine
#   SUITE_SMOKE=1 bash benchmarks/gpu_suite.sh    # CPU check of the wiring: batch 1, one step, no compile rows
#   SUITE_ONLY="base_bf16_sdpa data_loader" bash benchmarks/gpu_suite.sh   # a rerun of some configurations only
set -u -o pipefail

REPO_ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT_DIR=${OUT:-$REPO_ROOT/outputs/benchmarks}
SUITE_BUDGET_S=${SUITE_BUDGET_S:-420}
SMOKE=${SUITE_SMOKE:-0}
ONLY=${SUITE_ONLY:-}
PYTHON=${PYTHON:-python3}
RUN_DIR=$(mktemp -d)
export PYTHONPATH=$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT_DIR"
cd "$REPO_ROOT" || exit 1
exec > >(tee -a "$OUT_DIR/suite.log") 2>&1

PRETRAIN_SMOKE=()
DATA_ARGS=(--num_workers 1 4 8 16 --batched_decode cuda)
if [[ $SMOKE == 1 ]]; then
  PRETRAIN_SMOKE=(--batch_size 1 --warmup_steps 1 --steps 1)
  DATA_ARGS=(--num_workers 1 2 --num_shards 2 --images_per_shard 8 --batch_size 8 --batches_per_worker 1)
fi

combine_results() {  # results.json from every configuration's JSON and status line; prints the summary table
  "$PYTHON" - "$RUN_DIR" "$OUT_DIR/results.json" "$SUITE_BUDGET_S" <<'EOF'
import json, os, sys
run_dir, output, budget = sys.argv[1], sys.argv[2], int(sys.argv[3])
runs = []
for line in open(os.path.join(run_dir, "status.tsv")):
    name, rc, seconds, command = line.rstrip("\n").split("\t")
    path = os.path.join(run_dir, name + ".json")
    result = json.load(open(path)) if os.path.exists(path) else None
    status = {"0": "ok", "124": "timeout", "137": "timeout", "skipped": "skipped"}.get(rc, "failed")
    run = {"name": name, "status": status, "rc": rc, "seconds": int(seconds), "command": command}
    runs.append({**run, "result": result})
with open(output, "w") as file:
    json.dump({"suite_budget_s": budget, "runs": runs}, file, indent=2)
print(f"{'configuration':30} {'status':8} {'images/s':>9} {'ms/step':>8} {'GiB':>6} {'MFU':>6} {'warm-up s':>9} syncs")
for run in runs:
    result = run["result"] or {}
    if "images_per_second" in result:
        gib = (result["peak_memory_mib"] or 0) / 1024
        mfu = f"{100 * result['mfu']:.1f}%" if result.get("mfu") is not None else "n/a"
        syncs = len(result.get("host_syncs_in_step") or [])
        print(f"{run['name']:30} {run['status']:8} {result['images_per_second']:9.1f} {result['step_ms']:8.1f} "
              f"{gib:6.1f} {mfu:>6} {result['warmup_seconds']:9.1f} {syncs}")
    else:
        loader = " ".join(f"{m['num_workers']}w={m.get('images_per_second', 0):.0f}" for m in result.get("loader", []))
        decode = result.get("batched_decode_result") or {}
        gpu = f" gpu-decode={decode.get('images_per_second', 0):.0f} {decode.get('error', '')}" if decode else ""
        print(f"{run['name']:30} {run['status']:8} {loader}{gpu}")
EOF
}

run_config() {  # name limit_s script [args...]: one configuration under `timeout`, never fatal
  local name=$1 limit=$2 left started rc
  shift 2
  if [[ -n $ONLY && " $ONLY " != *" $name "* ]]; then return; fi
  left=$((SUITE_BUDGET_S - SECONDS))
  if ((left < 30)); then
    echo "== $name: skipped, suite budget spent"
    printf '%s\tskipped\t0\t%s\n' "$name" "$*" >>"$RUN_DIR/status.tsv"
  else
    ((limit > left)) && limit=$left
    echo "== $name (limit ${limit}s, ${SECONDS}s into the suite): $PYTHON $* --output_json $RUN_DIR/$name.json"
    started=$SECONDS
    timeout -k 10 "$limit" "$PYTHON" "$@" --output_json "$RUN_DIR/$name.json"
    rc=$?
    echo "== $name: exit $rc after $((SECONDS - started))s"
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - started))" "$*" >>"$RUN_DIR/status.tsv"
  fi
  [[ -f $RUN_DIR/status.tsv ]] && combine_results >/dev/null
}

pretrain() {  # name limit_s [bench_pretrain args...]
  local name=$1 limit=$2
  shift 2
  if [[ $SMOKE == 1 && " $* " == *" --compile"* ]]; then return; fi  # --compile and --compile_mode
  run_config "$name" "$limit" benchmarks/bench_pretrain.py "$@" ${PRETRAIN_SMOKE[@]+"${PRETRAIN_SMOKE[@]}"}
}

echo "== caev2_hf GPU suite, $(date -u +%FT%TZ), budget ${SUITE_BUDGET_S}s"
nvidia-smi || echo "nvidia-smi not available"
"$PYTHON" -c "import sys, torch, torchvision, transformers; print('python', sys.version.split()[0], '| torch',
torch.__version__, '| torchvision', torchvision.__version__, '| transformers', transformers.__version__,
'| cuda', torch.version.cuda, '| device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
echo "cpus: $(nproc)"

BASE=(--preset base --batch_size 256 --precision bf16 --attn_implementation sdpa)
pretrain base_bf16_sdpa 90 "${BASE[@]}"
pretrain base_bf16_eager 90 "${BASE[@]}" --attn_implementation eager
pretrain base_fp32_sdpa_b64 90 "${BASE[@]}" --precision fp32 --batch_size 64 --steps 10
pretrain base_bf16_sdpa_teacher_off 90 "${BASE[@]}" --teacher off
pretrain tiny_bf16_sdpa 90 "${BASE[@]}" --preset tiny
pretrain small_bf16_sdpa 90 "${BASE[@]}" --preset small
pretrain large_bf16_sdpa 120 "${BASE[@]}" --preset large
run_config data_loader 90 benchmarks/bench_data.py "${DATA_ARGS[@]}"
pretrain base_bf16_sdpa_compile 180 "${BASE[@]}" --compile
pretrain base_bf16_sdpa_compile_teacher_conv 180 "${BASE[@]}" --compile --teacher_patch_embedding conv  # A/B of the row above
pretrain base_bf16_sdpa_profile 90 "${BASE[@]}" --profile on --steps 5
pretrain base_bf16_sdpa_compile_reduce_overhead 180 "${BASE[@]}" --compile_mode reduce-overhead
pretrain base_bf16_sdpa_compile_teacher_off 180 "${BASE[@]}" --compile --teacher off
pretrain base_bf16_sdpa_compile_k2 180 "${BASE[@]}" --compile --masks_per_image 2
pretrain base_bf16_sdpa_compile_profile 180 "${BASE[@]}" --compile --profile on --steps 5
pretrain base_bf16_eager_compile 200 "${BASE[@]}" --attn_implementation eager --compile
# Triton matmul templates with fused epilogues: minutes of autotuning at start; run it alone (SUITE_ONLY, SUITE_BUDGET_S=600).
pretrain base_bf16_sdpa_compile_max_autotune 590 "${BASE[@]}" --compile_mode max-autotune-no-cudagraphs

nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv 2>/dev/null
echo "== done in ${SECONDS}s; results in $OUT_DIR/results.json"
[[ -f $RUN_DIR/status.tsv ]] && combine_results
rm -rf "$RUN_DIR"
