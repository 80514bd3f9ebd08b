#!/usr/bin/env bash
# GPU checks for a lent CUDA machine: one call, no network, ~6 minutes on an H100 (at most ~12: every step has a timeout).
#   bash scripts/gpu_check.sh            (from the repository root; results go to $OUT, default ./gpu_out)
# 1. the environment: torch with CUDA, the packages vseam imports (nothing is installed from the net);
# 2. `pytest -m gpu`: exact == reference in float32 / float16 / bfloat16 on tiny models, preset bench at full width;
#    then generation in float16 / bfloat16 (padded batches == batch-1, with and without modulation);
#    then placed models: a device_map splitting the decoder over cuda:0 and the CPU (exact == single GPU ==
#    reference, trace exact == reference, attribution), bitsandbytes 4- / 8-bit on CUDA (within the recorded tolerance);
# 3. `vseam bench search --preset llava-1.5-7b --dtype bfloat16 --questions 2`: the real 7B architecture
#    (random weights) — seconds per question, peak GPU memory and the projection for 1000 questions, per strategy;
#    the peak is printed beside the GPU fit's estimate for bfloat16 (weights + per-GPU reserve, gpu_fit.py).
set -u
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VSEAM_QUIET=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PY:-python}"
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }

log "$(date -u) on $(hostname)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt"
CUDA_OK=$($PY -c "import torch; print(torch.cuda.is_available())" 2>&1 | tail -1)
log "torch $($PY -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)' 2>&1 | tail -1); cuda available: $CUDA_OK"
if [ "$CUDA_OK" != "True" ]; then
  log "STOP: torch cannot see a CUDA GPU here (CPU-only torch or no driver); nothing installed from the net"
  exit 3
fi
MISSING=$($PY - <<'PY'
import importlib
mods = ["transformers", "pydantic", "yaml", "typer", "rich", "sqlalchemy", "safetensors", "PIL", "numpy",
        "matplotlib", "tokenizers", "huggingface_hub", "pytest"]
print(" ".join(m for m in mods if importlib.util.find_spec(m) is None))
PY
)
if [ -n "$MISSING" ]; then
  log "STOP: missing python packages (not installed: no network here): $MISSING"
  exit 3
fi
log "transformers $($PY -c 'import transformers; print(transformers.__version__)')"
if ! $PY -c "import vseam_run" 2>/dev/null; then
  $PY -m pip install -e . --no-deps --no-build-isolation -q >"$OUT/pip.txt" 2>&1 || log "pip install -e . --no-deps failed (see pip.txt)"
fi
$PY -c "import vseam_run; print('vseam_run from', vseam_run.__file__)" 2>&1 | tee -a "$OUT/summary.txt"

log "pytest -m gpu"
timeout 150 $PY -m pytest -m gpu -q -p no:cacheprovider -rA tests/test_gpu.py >"$OUT/pytest_gpu.txt" 2>&1
log "pytest rc=$? : $(tail -1 "$OUT/pytest_gpu.txt")"

# Generation (answer_match: generate, apply_modulation): float16 / bfloat16, batched vs batch-1, with and without
# a modulation; the -s output says per dtype whether batching held or fell back to batch-1.
log "pytest -m gpu generation (float16 / bfloat16)"
timeout 120 $PY -m pytest -m gpu -q -s -p no:cacheprovider -rA tests/test_gpu_generate.py >"$OUT/pytest_gpu_generate.txt" 2>&1
log "pytest generate rc=$? : $(tail -1 "$OUT/pytest_gpu_generate.txt")"
grep -E "^torch\.(float16|bfloat16) modulated" "$OUT/pytest_gpu_generate.txt" | tee -a "$OUT/summary.txt"

# device_map over cuda:0 + CPU and bitsandbytes on CUDA (tests/test_gpu_placement.py); -s prints each difference.
log "pytest -m gpu placement (device_map cuda:0 + cpu, bitsandbytes 4/8-bit)"
timeout 240 $PY -m pytest -m gpu -q -s -p no:cacheprovider -rA tests/test_gpu_placement.py >"$OUT/pytest_gpu_placement.txt" 2>&1
log "pytest placement rc=$? : $(tail -1 "$OUT/pytest_gpu_placement.txt")"
grep -E "^(cuda:0 \+ cpu split|CUDA quantization)" "$OUT/pytest_gpu_placement.txt" | sed 's/, shortcuts {.*//' | tee -a "$OUT/summary.txt"

# The fit (how many GPUs of this one's memory each dtype needs) is computed for this GPU's memory.
GPU_GIB=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1 | awk '{printf "%.1f", $1 / 1024}')
GPU_GIB=${GPU_GIB:-80}

# The fast strategies first, the reference (1 question = 1,024 full passes) last, each with its own limit, so a slow
# reference cannot take the other figures with it.
log "bench --preset llava-1.5-7b bfloat16, fast strategies"
timeout 150 $PY -m vseam_run bench search --preset llava-1.5-7b --device cuda --dtype bfloat16 --questions 2 \
  --strategies exact,attribution,attribution+verify --gpu-memory "$GPU_GIB" --json >"$OUT/bench_llava7b_fast.json" 2>"$OUT/bench_llava7b_fast.err"
log "bench fast rc=$?"
log "bench --preset llava-1.5-7b bfloat16, reference"
timeout 150 $PY -m vseam_run bench search --preset llava-1.5-7b --device cuda --dtype bfloat16 --questions 1 \
  --strategies reference --gpu-memory "$GPU_GIB" --json >"$OUT/bench_llava7b_reference.json" 2>"$OUT/bench_llava7b_reference.err"
log "bench reference rc=$?"
$PY - "$OUT" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
for f in ("bench_llava7b_fast.json", "bench_llava7b_reference.json"):
    try:
        r = json.loads((out / f).read_text())
    except Exception as e:  # noqa: BLE001
        print(f, "no result:", e); continue
    a = r["architecture"]
    print(f"{f}: {a['layers']}x{a['heads']} heads, hidden {a['hidden']}, {a['image_tokens']} image tokens of {a['sequence_tokens']}, {a['parameters_billion']}B params, {r['device']} {r['dtype']}")
    for s in r["strategies"]:
        print(f"  {s['name']:<20} {s['seconds_per_question']:9.2f} s/question  peak {s['peak_memory_gib']:6.2f} GiB  {s['projected_hours']:8.2f} h / {r['project']} questions")
    # The fit's estimate for the run's dtype (weights + the per-GPU reserve) against the measured peak.
    fit = {f["dtype"]: f for f in r.get("fit", [])}.get(r["dtype"])
    if fit and r["strategies"] and not any(n.startswith("shrunk") for n in r.get("notes", [])):  # the fit is the full model's
        est = fit["weights_gib"] + fit["reserve_gib"]
        for s in r["strategies"]:
            print(f"  fit {r['dtype']}: weights {fit['weights_gib']:.2f} + reserve {fit['reserve_gib']:.2f} = {est:.2f} GiB "
                  f"({fit['gpus']} GPU(s) of {r['fit_assumes']['gpu_memory_gib']:g} GiB); {s['name']} peak "
                  f"{s['peak_memory_gib']:.2f} GiB = {s['peak_memory_gib'] / est:.2f} × the estimate; peak above weights "
                  f"{s['peak_memory_gib'] - fit['weights_gib']:.2f} GiB vs reserve {fit['reserve_gib']:.2f}")
PY
log "done $(date -u)"
