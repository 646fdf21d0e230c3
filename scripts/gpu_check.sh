#!/usr/bin/env bash
# GPU check: run every packaged accelerate config (DDP, FSDP, DeepSpeed ZeRO-2) on the paper recipes in smoke mode
# (`tamperlab run RECIPE --smoke`: tiny model of the same family, a few rows, two steps), plus the 2-vs-1-process
# equality test on GPUs. For the machine that has GPUs; CPU CI covers DDP over gloo (tests/ctrap/test_accelerate.py).
#
#   bash scripts/gpu_check.sh [OUT_DIR]          # DRY_RUN=1 prints the commands without running them
#
# Look-ahead defenses (CTRAP, Booster) need DDP: under FSDP / DeepSpeed the CTRAP recipe is run with the SFT
# defense only, and the full recipe is checked to be refused with a one-line error (exit 2), not run wrongly.
# Exit status: 0 when every check passed (skips are listed), 1 otherwise.
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-$ROOT/runs/gpu_check}"
CONFIGS="$ROOT/src/tamperlab/accelerate_configs"
RECIPES=(ctrap_paper_gpu extraction_paper_gpu meraser_paper_gpu)
PY="${PYTHON:-python}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"

NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [[ "${DRY_RUN:-0}" != 1 && "$NGPU" -lt 1 ]]; then
    echo "gpu_check: no CUDA device visible to $PY (torch.cuda.device_count() = $NGPU)" >&2
    exit 1
fi
NPROC=$(( NGPU > 1 ? NGPU : 1 ))
[[ "${DRY_RUN:-0}" == 1 && "$NPROC" -lt 2 ]] && NPROC=2

declare -a RESULTS=()
FAILED=0

# run NAME EXPECTED_EXIT CMD...: runs CMD, logs to OUT/NAME.log, records PASS/FAIL against the expected exit code.
run() {
    local name="$1" want="$2"; shift 2
    echo "== $name: $*"
    if [[ "${DRY_RUN:-0}" == 1 ]]; then RESULTS+=("DRY   $name"); return; fi
    local t0=$SECONDS
    "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    if [[ $rc -eq $want ]]; then
        RESULTS+=("PASS  $name ($((SECONDS - t0)) s, exit $rc)")
    else
        RESULTS+=("FAIL  $name ($((SECONDS - t0)) s, exit $rc, expected $want; see $OUT/$name.log)")
        FAILED=1
    fi
}

launch() {  # launch CONFIG ARGS...: accelerate launch with that config on NPROC processes
    local cfg="$1"; shift
    "$PY" -m accelerate.commands.launch --config_file "$CONFIGS/$cfg.yaml" --num_processes "$NPROC" "$@"
}

for cfg in multi_gpu fsdp deepspeed_zero2; do
    if [[ $cfg == deepspeed_zero2 && "${DRY_RUN:-0}" != 1 ]] && ! "$PY" -c "import deepspeed" 2>/dev/null; then
        RESULTS+=("SKIP  $cfg: deepspeed is not installed (pip install -e '.[gpu]')")
        continue
    fi
    for recipe in "${RECIPES[@]}"; do
        name="$cfg-$recipe"
        extra=()
        if [[ $cfg != multi_gpu && $recipe == ctrap_paper_gpu ]]; then
            # the full recipe must be refused (CTRAP is a look-ahead defense) ...
            run "$name-refused" 2 launch "$cfg" -m tamperlab.cli run "$recipe" --smoke \
                --output-dir "$OUT" --name "$name-refused" --force
            # ... and its SFT part must run
            extra=(--set "defenses=[{name: sft}]")
        fi
        run "$name" 0 launch "$cfg" -m tamperlab.cli run "$recipe" --smoke "${extra[@]}" \
            --output-dir "$OUT" --name "$name" --force
        if [[ "${DRY_RUN:-0}" != 1 && ! -f "$OUT/$name/metrics.json" ]]; then
            RESULTS+=("FAIL  $name: no metrics.json"); FAILED=1
        fi
    done
done

# 2 processes = 1 process (per-step losses and adapters within 1e-4), on the GPUs (needs 2 GPUs for NCCL).
if [[ "$NPROC" -ge 2 ]]; then
    run ddp-equality 0 env TAMPERLAB_DDP_CONFIG="$CONFIGS/multi_gpu.yaml" \
        "$PY" -m pytest "$ROOT/tests/ctrap/test_accelerate.py" -x -q -s
else
    RESULTS+=("SKIP  ddp-equality: needs 2 GPUs (NCCL cannot put two ranks on one device)")
fi

echo
echo "gpu_check summary ($NGPU GPU(s), $NPROC processes per launch; logs in $OUT):"
printf '  %s\n' "${RESULTS[@]}"
exit $FAILED
