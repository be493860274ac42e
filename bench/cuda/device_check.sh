#!/usr/bin/env bash
# The GPU checks of issue #9 in one go, for a lent GPU machine that has the
# CUDA driver and python3 with torch + numpy but none of vlft's build
# dependencies. Prepare here with `bench/cuda/device_check.sh --pack` (builds
# `make CUDA=1` and packs the binaries and the shared libraries they need
# into .devcarry/); run there from the repository root with .devcarry
# carried: `bench/cuda/device_check.sh [STAGES]`, STAGES a comma list of
# info,parity,model,train,bench-lora,bench-full,train-6b (default: all but
# bench-full and train-6b).
# Logs and results go to $OUT (or /tmp/vlft-device).
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
carry=.devcarry

if [ "${1:-}" = "--pack" ]; then
    set -e
    make CUDA=1 -j2 build-cuda/vlft cuda-tests >/dev/null
    rm -rf "$carry"
    mkdir -p "$carry/tests/cuda"
    cp build-cuda/vlft "$carry/"
    cp build-cuda/tests/cuda/* "$carry/tests/cuda/" 2>/dev/null || true
    rm -f "$carry"/tests/cuda/*.o "$carry"/tests/cuda/*.d
    # Every shared library but the C library and CUDA's own (the machine has those).
    ldd build-cuda/vlft "$carry"/tests/cuda/* | awk '/=> \//{print $3}' | sort -u |
        grep -v -E '/(libc|libm|libdl|librt|libpthread|ld-linux[^/]*)\.so|libcuda|libcudart|libcublas' >"$carry/libs.txt"
    mkdir -p "$carry/lib"
    while read -r lib; do cp -L "$lib" "$carry/lib/"; done <"$carry/libs.txt"
    tar -C "$carry" -cJf "$carry/lib.tar.xz" lib && rm -rf "$carry/lib"
    du -sh "$carry"
    exit 0
fi

stages=${1:-info,parity,model,train,bench-lora}
py=${PYTHON:-python3}
out=${OUT:-/tmp/vlft-device}
mkdir -p "$out"
has() { case ",$stages," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
mkdir -p /tmp/vlft-lib && tar -C /tmp/vlft-lib -xJf "$carry/lib.tar.xz"
cuda_libs=$(ls -d /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib 2>/dev/null | tr '\n' ':')
pip_libs=$("$py" -c 'import nvidia, os; b = os.path.dirname(nvidia.__path__[0]); print(":".join(os.path.join(r, d) for r, ds, _ in os.walk(os.path.join(b, "nvidia")) for d in ds if d == "lib"))' 2>/dev/null)
export LD_LIBRARY_PATH="/tmp/vlft-lib/lib:${cuda_libs}${pip_libs}:${LD_LIBRARY_PATH:-}"
export VLFT_BIN="$root/$carry/vlft" VLFT_BUILD="$root/$carry" PYTHONUNBUFFERED=1
export TMPDIR=/tmp
summary="$out/summary.txt"
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }

if has info; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$out/gpu.txt"
    missing=$(ldd "$VLFT_BIN" | grep 'not found')
    [ -n "$missing" ] && note "MISSING LIBS: $missing"
    note "cuda-info: $("$VLFT_BIN" _cuda-info 2>&1) (rc $?)"
fi
if has parity; then
    for p in kernel_parity attention_parity; do
        timeout 300 "$carry/tests/cuda/$p" >"$out/$p.txt" 2>&1
        note "$p: rc $? -- $(tail -1 "$out/$p.txt")"
        grep -E '^FAIL' "$out/$p.txt" | head -20 | tee -a "$summary"
    done
    sed -n '/^== timing/,/^$/p' "$out/attention_parity.txt" | head -14 | tee -a "$summary"
    # ATTENTION=auto-mma: the later stages use the mma attention when every mma check passed.
    if [ "${ATTENTION:-}" = auto-mma ]; then
        if grep -q '^PASS mma' "$out/attention_parity.txt" && ! grep -q '^FAIL' "$out/attention_parity.txt"; then
            export VLFT_CUDA_ATTENTION=mma
        fi
        note "attention for the later stages: ${VLFT_CUDA_ATTENTION:-default}"
    fi
fi
if has model; then
    timeout 420 "$py" tests/python/runner.py "$carry" test_cuda.test_cuda_step >"$out/model.txt" 2>&1
    note "model vs reference: $(tail -1 "$out/model.txt")"
    grep -E '^(FAIL|ok|SKIP)|images|Error|assert' "$out/model.txt" | head -40 | tee -a "$summary"
fi
if has train; then
    timeout 420 "$py" tests/python/runner.py "$carry" test_cuda.test_cuda_training >"$out/train.txt" 2>&1
    note "train cpu vs gpu: $(tail -1 "$out/train.txt")"
    grep -E '^(FAIL|ok|SKIP|cpu|gpu)|Error|assert' "$out/train.txt" | head -20 | tee -a "$summary"
fi
if has bench-lora || has bench-full; then
    start=$(date +%s)
    [ -d /tmp/yi6b ] || "$VLFT_BIN" init-tiny /tmp/yi6b --preset yi-vl-6b >"$out/init.txt" 2>&1
    note "init-tiny yi-vl-6b: $(( $(date +%s) - start )) s"
    if has bench-lora; then
        timeout 400 "$py" bench/cuda/yi_vl_6b.py --model /tmp/yi6b --mode lora --cases "${BENCH_CASES:-demo1,demo4,long1}" \
            --checkpointing "${BENCH_CKPT:-1,0}" --out "$out/bench_lora.json" >"$out/bench_lora.txt" 2>&1
        tail -16 "$out/bench_lora.txt" | tee -a "$summary"
        if [ -n "${BENCH_PROFILE:-}" ]; then
            # part timings from CUDA events (a separate run: the events cost a little)
            VLFT_CUDA_PROFILE=1 timeout 200 "$py" bench/cuda/yi_vl_6b.py --model /tmp/yi6b --mode lora --repeat 2 \
                --cases "$BENCH_PROFILE" --checkpointing 1,0 >"$out/bench_profile.txt" 2>&1
            grep -E '^[a-z0-9]+ ckpt' "$out/bench_profile.txt" | tee -a "$summary"
        fi
        if [ -n "${BENCH_COMPARE_FLASH:-}" ]; then
            # the same cases with the older wmma "flash" attention, for the side-by-side ratio
            VLFT_CUDA_ATTENTION=flash timeout 200 "$py" bench/cuda/yi_vl_6b.py --model /tmp/yi6b --mode lora \
                --cases "$BENCH_COMPARE_FLASH" --checkpointing 1 --out "$out/bench_lora_flash.json" \
                >"$out/bench_lora_flash.txt" 2>&1
            tail -4 "$out/bench_lora_flash.txt" | tee -a "$summary"
        fi
    fi
    if has bench-full; then
        timeout 400 "$py" bench/cuda/yi_vl_6b.py --model /tmp/yi6b --mode full --cases "${BENCH_CASES_FULL:-demo1,demo4}" \
            --checkpointing "${BENCH_FULL_CKPT:-1}" --out "$out/bench_full.json" >"$out/bench_full.txt" 2>&1
        tail -10 "$out/bench_full.txt" | tee -a "$summary"
    fi
fi
if has train-6b; then
    # `vlft train` end to end on the Yi-VL-6B preset (it carries the bundled tokenizer): LoRA on the demo
    # dataset at 448 px; train_samples_per_second as all_results.json reports it (image decoding,
    # batching, steps and the final save included).
    [ -d /tmp/yi6b ] || "$VLFT_BIN" init-tiny /tmp/yi6b --preset yi-vl-6b >"$out/init.txt" 2>&1
    rm -rf /tmp/demo6b && "$VLFT_BIN" demo-data /tmp/demo6b --n "${TRAIN6B_SAMPLES:-96}" --seed 5 >/dev/null
    printf '%s\n' "model_name_or_path: /tmp/yi6b" "stage: sft" "finetuning_type: lora" "lora_rank: 8" \
        "lora_target: all" "dataset: mllm_demo" "dataset_dir: /tmp/demo6b" "template: yi_vl" "cutoff_len: 4096" \
        "per_device_train_batch_size: ${TRAIN6B_BATCH:-4}" "gradient_accumulation_steps: 1" \
        "learning_rate: 1.0e-4" "num_train_epochs: 1" "lr_scheduler_type: cosine" "warmup_ratio: 0.1" "bf16: true" \
        "logging_steps: 5" "save_steps: 1000" "output_dir: /tmp/yi6b_out" "overwrite_output_dir: true" \
        "val_size: 0" "disable_gradient_checkpointing: ${TRAIN6B_NO_CKPT:-false}" >/tmp/yi6b_lora.yaml
    timeout 400 "$VLFT_BIN" train --device cuda /tmp/yi6b_lora.yaml >"$out/train6b.txt" 2>&1
    note "vlft train yi-vl-6b lora: rc $? -- $(tr -d '\n ' </tmp/yi6b_out/all_results.json 2>/dev/null)"
fi
echo "== summary"
cat "$summary"
