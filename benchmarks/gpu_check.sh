#!/usr/bin/env bash
# GPU acceptance, in one command for the minutes a GPU machine is lent (issue 21):
#   bash benchmarks/gpu_check.sh [OUT]            # run everything; figures in OUT/gpu_check.json
#   bash benchmarks/gpu_check.sh --dry-run [OUT]  # list what it would run (works on CPU)
# Steps (each with its own time limit; about 6 minutes on one H200, at most 9):
#   1. the device, torch and CUDA versions
#   2. tests/test_gpu_path.py (with a GPU its sync-debug test runs: no host sync in a scored ablated batch)
#   3. a tiny-Llama CLI run per precision (bf16-mixed, bf16-true, 16-mixed) on the GPU, and DDP on 2 GPUs if present
#   4. several ablations per pass on the GPU: a tiny-Llama run at K = 1 and at auto K, whose rows must agree
#   5. the benchmark of ablated points against a plain forward: SmolLM2-135M and OPT-125m shapes, bf16
#   6. the benchmark of several ablations per pass (single-unit map, a 7-method point) at K = 1, 4, 16, auto
#   7. an attribution run of the tiny Llama on the GPU (bf16-mixed, with GradDrop and its exact checks)
#   8. the benchmark of the attribution map (every neuron x 4 methods, and with GradDrop) against a plain
#      forward and the exact head map: SmolLM2-135M shape, bf16
# A failed step is recorded and the next one runs; the exit code is that of the first failure.
# OUT holds two files: gpu_check.json (rewritten after every step: each step's rc, seconds and last
# log lines, then the benchmarks' figures) and logs.tgz (every log). The logs, tiny assets and runs
# are written under $GPU_CHECK_WORK (default OUT/work).
#
# On the lent GPU machine (its python3 holds torch, lightning, transformers and timm, but not
# jsonargparse, omegaconf or datasets, and nothing can be fetched there): first, here,
# `bash benchmarks/gpu_wheels.sh` puts the missing wheels in .whl/ (ignored by git); then, with the
# device tool, run(command="GPU_CHECK_WORK=/tmp/gc bash benchmarks/gpu_check.sh $OUT", carry=[".whl"],
# timeout_s=540). The wheels are installed into /tmp/site; ablate_lit runs from this checkout.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
OUT="${1:-gpu_check}"
WORK="${GPU_CHECK_WORK:-$OUT/work}"
mkdir -p "$OUT" "$WORK"
OUT="$(cd "$OUT" && pwd)" WORK="$(cd "$WORK" && pwd)"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 PYTHONWARNINGS=ignore PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
if [[ $DRY == 0 ]] && compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "could not install the wheels in .whl/"; exit 3; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" # this checkout's ablate_lit, installed or not
ASSETS="$WORK/assets"
STEPS=()
FAILED=0

record() { # gpu_check.json from the steps so far and the benchmarks' figures
  "$PY" - "$OUT" "$WORK" "${STEPS[@]}" <<'EOF'
import contextlib, json, pathlib, sys
out, work, steps = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), [json.loads(s) for s in sys.argv[3:]]
for s in steps:
    log = work / f"{s['step']}.log"
    s["log_tail"] = log.read_text(errors="replace").splitlines()[-25:] if log.exists() else []
benches = {}
for p in sorted(work.glob("bench-*.json")):
    try:
        benches[p.stem] = json.loads(p.read_text())
    except ValueError:
        benches[p.stem] = "unreadable (cut off while writing?)"
device = None
for line in (work / "device.log").read_text(errors="replace").splitlines() if (work / "device.log").exists() else []:
    if line.startswith("{"):  # the JSON line (a warning may be printed beside it)
        with contextlib.suppress(ValueError):
            device = json.loads(line)
record = {"device": device, "steps": steps, "benchmarks": benches}
(out / "gpu_check.json").write_text(json.dumps(record, indent=2))
EOF
}

step() { # step NAME LIMIT_S COMMAND...
  local name="$1" limit="$2"
  shift 2
  if [[ $DRY == 1 ]]; then
    echo "would run [$name, at most ${limit}s]: $*"
    return
  fi
  local start=$SECONDS
  timeout --kill-after=15 "$limit" "$@" >"$WORK/$name.log" 2>&1
  local rc=$?
  STEPS+=("{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - start))}")
  echo "[$name] rc=$rc in $((SECONDS - start)) s (log: $WORK/$name.log)"
  if [[ $rc != 0 && $FAILED == 0 ]]; then FAILED=$rc; fi
  record
}

tiny_run() { # tiny_run NAME PRECISION [EXTRA...]
  local name="$1" precision="$2"
  shift 2
  step "$name" 120 "$PY" -m ablate_lit test --model ablate_lit.CausalLMAblation \
    --model.name_or_path "$ASSETS/models/llama" --data ablate_lit.TextData --data.path "$ASSETS/corpus" \
    --data.max_tokens 512 --data.calib_tokens 512 --data.context_length 64 --data.batch_size 4 \
    --ablation.methods '[zero,mean,peak,resample:random_tokens]' --ablation.fractions '[0,0.5,1]' \
    --ablation.seeds '[0]' --ablation.kl true --trainer.accelerator gpu --trainer.precision "$precision" \
    --trainer.enable_progress_bar false --root "$WORK/runs" --name "$name" "$@"
}

step device 60 "$PY" -c "import json, torch; print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, \
'devices': [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}))"
step assets 120 "$PY" -m ablate_lit.testing.tiny "$ASSETS"
step gpu_tests 180 "$PY" -m pytest tests/test_gpu_path.py -q -p no:cacheprovider
for precision in bf16-mixed bf16-true 16-mixed; do
  tiny_run "tiny-$precision" "$precision"
done
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [[ $DRY == 1 || ${GPUS:-0} -ge 2 ]]; then
  tiny_run tiny-ddp-2 bf16-mixed --trainer.devices 2 --trainer.strategy ddp
fi
tiny_run tiny-per-pass-1 bf16-mixed --ablation.ablations_per_pass 1
tiny_run tiny-per-pass-auto bf16-mixed --ablation.ablations_per_pass auto
step per_pass_rows 60 "$PY" benchmarks/compare_rows.py "$WORK/runs/tiny-per-pass-1" "$WORK/runs/tiny-per-pass-auto"
for shape in smollm2-135m opt-125m; do
  step "bench-$shape" 150 "$PY" benchmarks/bench_run.py --shape "$shape" --device cuda --dtype bfloat16 \
    --tokens 16384 --length 512 --batch 8 --json "$WORK/bench-$shape.json"
done

step bench-per-pass 200 "$PY" benchmarks/bench_per_pass.py --shape smollm2-135m --device cuda --dtype bfloat16 \
  --length 512 --batch 8 --windows 16 --per-pass 1,4,16,auto --json "$WORK/bench-per-pass.json"
tiny_run tiny-attribution bf16-mixed --ablation.schedule attribution --ablation.attribution_graddrop true \
  --ablation.attribution_top_k 3 --ablation.attribution_sample 4
step bench-attribution 150 "$PY" benchmarks/bench_attribution.py --shape smollm2-135m --device cuda \
  --dtype bfloat16 --length 512 --batch 8 --windows 16 --json "$WORK/bench-attribution.json"

if [[ $DRY == 0 ]]; then
  record
  tar czf "$OUT/logs.tgz" -C "$WORK" --exclude assets --exclude runs . 2>/dev/null
  echo "figures: $OUT/gpu_check.json (logs: $OUT/logs.tgz)"
fi
exit $FAILED
