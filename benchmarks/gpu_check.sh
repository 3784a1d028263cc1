#!/usr/bin/env bash
# GPU acceptance, in one command for the minutes a GPU machine is lent (issue 21):
#   bash benchmarks/gpu_check.sh [OUT]            # run everything, figures into OUT/gpu_check.json
#   bash benchmarks/gpu_check.sh --dry-run [OUT]  # list what it would run (works on CPU)
# Steps (each with its own time limit, all within ~8 minutes on one H200):
#   1. the device, torch and CUDA versions
#   2. tests/test_gpu_path.py (with a GPU its sync-debug test runs: no host sync in a scored ablated batch)
#   3. a tiny-Llama CLI run per precision (bf16-mixed, bf16-true, 16-mixed) on the GPU, and DDP on 2 GPUs if present
#   4. the benchmark of ablated points against a plain forward: SmolLM2-135M and OPT-125m shapes, bf16
# A failed step is recorded in the JSON and the next one runs; the exit code is that of the first failure.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
OUT="${1:-gpu_check}"
mkdir -p "$OUT"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 PYTHONWARNINGS=ignore
ASSETS="$OUT/assets"
STEPS=()
FAILED=0

step() {  # step NAME LIMIT_S COMMAND...
  local name="$1" limit="$2"
  shift 2
  if [[ $DRY == 1 ]]; then
    echo "would run [$name, at most ${limit}s]: $*"
    return
  fi
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  STEPS+=("{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - start))}")
  echo "[$name] rc=$rc in $((SECONDS - start)) s (log: $OUT/$name.log)"
  if [[ $rc != 0 && $FAILED == 0 ]]; then FAILED=$rc; fi
}

tiny_run() {  # tiny_run NAME PRECISION [EXTRA...]
  local name="$1" precision="$2"
  shift 2
  step "$name" 120 python -m ablate_lit test --model ablate_lit.CausalLMAblation \
    --model.name_or_path "$ASSETS/models/llama" --data ablate_lit.TextData --data.path "$ASSETS/corpus" \
    --data.max_tokens 512 --data.calib_tokens 512 --data.context_length 64 --data.batch_size 4 \
    --ablation.methods '[zero,mean,peak,resample:random_tokens]' --ablation.fractions '[0,0.5,1]' \
    --ablation.seeds '[0]' --ablation.kl true --trainer.accelerator gpu --trainer.precision "$precision" \
    --trainer.enable_progress_bar false --root "$OUT/runs" --name "$name" "$@"
}

step device 60 python -c "import json, torch; print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, \
'devices': [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}))"
step assets 120 python -m ablate_lit.testing.tiny "$ASSETS"
step gpu_tests 180 python -m pytest tests/test_gpu_path.py -q -p no:cacheprovider
for precision in bf16-mixed bf16-true 16-mixed; do
  tiny_run "tiny-$precision" "$precision"
done
GPUS=$(python -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [[ $DRY == 1 || ${GPUS:-0} -ge 2 ]]; then
  tiny_run tiny-ddp-2 bf16-mixed --trainer.devices 2 --trainer.strategy ddp
fi
for shape in smollm2-135m opt-125m; do
  step "bench-$shape" 150 python benchmarks/bench_run.py --shape "$shape" --device cuda --dtype bfloat16 \
    --tokens 16384 --length 512 --batch 8 --json "$OUT/bench-$shape.json"
done

if [[ $DRY == 0 ]]; then
  python - "$OUT" "${STEPS[@]}" <<'EOF'
import json, pathlib, sys
out, steps = pathlib.Path(sys.argv[1]), [json.loads(s) for s in sys.argv[2:]]
benches = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("bench-*.json"))}
device = (out / "device.log").read_text().strip().splitlines()[-1:] if (out / "device.log").exists() else []
record = {"device": json.loads(device[0]) if device else None, "steps": steps, "benchmarks": benches}
(out / "gpu_check.json").write_text(json.dumps(record, indent=2))
print(f"figures: {out / 'gpu_check.json'}")
EOF
fi
exit $FAILED
