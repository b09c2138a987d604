#!/usr/bin/env bash
# The GPU checks and benchmarks of issues 4 and 7, in phases that each fit one 10-minute call on
# a 4-GPU machine (all but train also on 2 GPUs). Logs go to $OUT (default ./gpu-logs), at most 8
# files a phase; a short summary is printed last.
#
#   bash tools/gpu_runs.sh tests     # pytest -m gpu: kernels, elementwise, ring (2 GPUs); beside them
#                                    # the bf16-vs-float32 error of bench_wan.py at 2 layers
#   bash tools/gpu_runs.sh training  # pytest -m gpu tests/training: exact resume across layouts
#                                    # (4 GPUs: TP2 x DP2 -> TP1 x DP4; 2 GPUs: DP2 -> TP2), bf16
#   bash tools/gpu_runs.sh wan     # tools/bench_wan.py: 1 GPU next to diffusers, TP=2, CP=2 a2a and p2p
#   bash tools/gpu_runs.sh cosmos  # tools/bench_cosmos.py: Cosmos-Predict2-2B at 1024x1024 next to diffusers
#                                  # (bf16 errors of both, kernel profiles), the 14B width with 4 blocks, then
#                                  # TP=2 and CP=2
#   bash tools/gpu_runs.sh train   # tools/bench_train.py: 1 GPU, TP2 x CP2, TP2 x DP2, DP4
#   bash tools/gpu_runs.sh kernel  # tools/tune_flash_jvp.py: both attention kernels' launch configs at
#                                  # self-attention and both cross shapes, checked against float64 (sweep.json);
#                                  # pytest -m gpu tests/kernels; bench_attention.py's kernel table (issue 23)
#                                  # (KERNEL_QUICK=1: no sweep, the tests and the table only, about 4 minutes)
#   bash tools/gpu_runs.sh generate    # tools/bench_generate.py on 1 GPU: 4-step student vs 50-step CFG teacher
#   bash tools/gpu_runs.sh generate2   # the same with the transformer at TP=2, then at CP=2 (2 GPUs)
#                                      # (both need transformers for UMT5: its wheel in .whl/ if not installed)
#   bash tools/gpu_runs.sh generate-cosmos  # bench_generate.py on 1 GPU: Cosmos-Predict2-2B at 1024x1024, T5-11B's
#                                           # encoder, 4-step student vs 35-step teacher with CFG 7
#   bash tools/gpu_runs.sh plan    # tools/validate_plan.py on GPU 0: planner vs measured training runs
#                                  # (PLAN_CASES=a,b picks cases; PLAN_CALIBRATE=0 skips the calibrations)
#   bash tools/gpu_runs.sh offload # pytest -m gpu tests/training/test_offload_gpu.py on GPU 0: offloads change no number
#                                  # (OFFLOAD_CACHES=1: again on empty compile caches, and with inductor's caches off)
#   bash tools/gpu_runs.sh keepattn # on GPU 0 (about 7 minutes): bench_train.py with full recompute, with it
#                                   # keeping attention (--recompute-keep-attention), and the planner's pick with
#                                   # --keep-attention (issue 23); last, its pytest -m gpu test
#                                   # (KEEPATTN_QUICK=1: the first two runs only, about 5 minutes; KEEPATTN_PLAN=1:
#                                   # the planner's pick only, with cold caches)
#   bash tools/gpu_runs.sh profile # on GPU 0 (about 8 minutes): bench_train.py's first iteration with empty, then
#                                  # reused Triton/TorchInductor caches; profile_train.py's breakdown of a student
#                                  # and a critic iteration (and what the first ones compiled); bench_train.py
#                                  # with the planner's block recompute
#   bash tools/gpu_runs.sh profile-plan # on GPU 0 (about 8 minutes): the planner's pick with --keep-attention,
#                                       # timed by bench_train.py with torch's default allocator (cold caches),
#                                       # expandable segments, the default again; then profile_train.py's
#                                       # breakdown of it with the device's idle gaps and torch.compile's
#                                       # recompilations (PROFILE_ALLOC: its allocator; PROFILE_ONLY=1: the
#                                       # profile alone; PROFILE_ITERS: its iterations, default 4;
#                                       # PROFILE_TOP: how many of the largest kernels it lists, default 15)
#   AB_BASE=DIR bash tools/gpu_runs.sh ab  # on GPU 0: an A/B of this tree against the one checked out in DIR
#                                  # (e.g. `git archive BASE | tar -x -C DIR`): bench_train.py --iters 10 with the
#                                  # planner's one-GPU keep-attention pick, base and this tree in turn, AB_RUNS times
#                                  # each (default 2; about 100 s a run, the first cold); then compare_runs.py
#   bash tools/gpu_runs.sh plain   # on GPU 0 (about 3 minutes): FlashAttention-4's GPU tests, then
#                                  # tools/bench_plain_attention.py (flash-attn-4 must import: docs/kernels.md)
#   bash tools/gpu_runs.sh coldstart # on GPU 0 (about 7 minutes; not yet run as a phase): bench_train.py's first
#                                    # iteration with the planner's pick: SDPA on empty caches, then FlashAttention-4
#                                    # on empty caches (its warm-up child compiles and leaves its stamp) and twice
#                                    # on the caches it left (no child); run it first on a fresh machine
#   bash tools/gpu_runs.sh study   # on GPU 0 (about 2 minutes): tools/study_hopper_kernel.py, the Hopper attention
#                                  # kernel beside copies with one piece of its key loop taken out, with each build's
#                                  # SASS order (STUDY_AGAINST=FILE: its A/B against that version of
#                                  # flash_jvp_hopper.py instead; STUDY_CONFIGS="64,64,1 64,64,1,0,1": this
#                                  # kernel at those pipeline shapes against each other instead)
#   bash tools/gpu_runs.sh digits-calib  # the digits runs' speed on GPU 0, to size phases A and B: one rCM run of
#                                        # 100 student updates alone, then the 12 ablations side by side
#   bash tools/gpu_runs.sh digits-a  # tools/digits_study.py phase A on GPU 0: the ablations on the val split (tiny
#                                    # runs side by side) of DIGITS_ROUND (default 16; round 1 also trains a teacher
#                                    # from the shipped one beside them, with its val FD curve)
#   bash tools/gpu_runs.sh digits-b  # phase B: the 3-seed test table with A's choice.json and teacher, which
#                                    # phase A leaves in runs/digits_a (carry it to a fresh machine; DIGITS_A=path)
#                                    # (DIGITS_UPDATES, DIGITS_TEACHER_MINUTES, DIGITS_JOBS, DIGITS_MINUTES_S change
#                                    # the budgets; everything comes back as OUT/digits_PHASE.tar.gz)
#
# Machines without megatron-core/diffusers/webdataset/braceexpand: put their wheels in .whl/ (see
# docs/training.md); they are installed into /tmp/site first.
set -u
PHASES="tests|training|wan|cosmos|train|kernel|generate|generate2|generate-cosmos|plan|offload|keepattn|ab|plain|coldstart"
PHASES="$PHASES|study|digits-calib|digits-a|digits-b|profile|profile-plan"
[[ "${1:-}" =~ ^($PHASES)$ ]] || { echo "usage: bash tools/gpu_runs.sh $PHASES" >&2; exit 2; }
if [ "$1" = ab ]; then  # checked before the install, so that a wrong AB_BASE ends at once
  AB_BASE=$(cd "${AB_BASE:-/nonexistent}" 2>/dev/null && [ -f tools/bench_train.py ] && pwd) \
    || { echo "ab: set AB_BASE to the folder of a checkout of the base tree (with tools/bench_train.py)" >&2; exit 2; }
fi
OUT=${OUT:-gpu-logs}
mkdir -p "$OUT"
# two phases may run side by side (tests and training do, in one call): the second waits for the
# first one's install
if ls .whl/*.whl >/dev/null 2>&1; then
  if mkdir /tmp/site.lock 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/*.whl || exit 1
    touch /tmp/site.done
  fi
  while [ ! -e /tmp/site.done ]; do sleep 2; done
  export PYTHONPATH=$PWD:/tmp/site
fi
# flash-attn-4's CUTLASS DSL, installed with --target: the .pth file that adds its packages is not read there
[ -d /tmp/site/nvidia_cutlass_dsl/dsl_packages ] && export PYTHONPATH=$PYTHONPATH:/tmp/site/nvidia_cutlass_dsl/dsl_packages
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor TRITON_CACHE_DIR=/tmp/triton
nvidia-smi -L > "$OUT/gpus.txt"
GPUS=$(wc -l < "$OUT/gpus.txt")
TORCHRUN="torchrun --standalone --nproc-per-node 2"
# on 4 GPUs the 1- and 2-GPU jobs run side by side; on 2 they share the pair
if [ "$GPUS" -ge 4 ]; then PAIR=1,2 LAST=3; elif [ "$GPUS" -ge 2 ]; then PAIR=0,1 LAST=1; else PAIR= LAST=0; fi

# the planner's one-GPU keep-attention pick for GPU 0's free memory: its JSON to $OUT/$1_plan.json (the
# planner's messages to $OUT/$1_prepare.log); prints the pick's trainer flags
keepattn_pick() {
  local gib
  gib=$(python3 -c "import torch; print(torch.cuda.mem_get_info()[1] / 2**30)")
  python3 tools/plan.py --model wan2.1-t2v-1.3b --gpus 1 --gpu-memory-gib "$gib" --keep-attention --json \
    > "$OUT/$1_plan.json" 2>> "$OUT/$1_prepare.log"
  python3 -c "import json, sys; print(*json.load(open(sys.argv[1]))['layouts'][0]['flags'])" "$OUT/$1_plan.json"
}
# what profile_train.py's first iterations compiled, and the kernels compiled in the trainer's process
compile_summary() {
  sed -n "/^torch.compile's graphs by iteration/,/^the [0-9]* functions/p; /^Triton kernels compiled/,/^| kernel |/p" \
    "$OUT/profile.log" | grep .
}

case "${1:-}" in
tests)
  # a float32 JVP at 32760 tokens is slow (fp32 without tensor cores): 2 layers, on the last GPU,
  # beside the tests (no timings are taken here)
  CUDA_VISIBLE_DEVICES=$LAST timeout 560 python3 tools/bench_wan.py --layers 2 --skip-diffusers \
    > "$OUT/wan_error.log" 2>&1 &
  error_run=$!
  # cold Triton cache, beside the training phase: more than 230 s (54 s warm and alone)
  CUDA_VISIBLE_DEVICES=0 timeout 450 python3 -m pytest -q -m gpu -p no:cacheprovider tests/kernels \
    tests/models > "$OUT/tests_1gpu.log" 2>&1 &
  one_gpu=$!
  if [ -n "$PAIR" ]; then
    CUDA_VISIBLE_DEVICES=$PAIR timeout 230 python3 -m pytest -q -m gpu -p no:cacheprovider tests/parallel \
      > "$OUT/tests_2gpu.log" 2>&1
  else
    echo "one GPU: the 2-GPU tests (tests/parallel) did not run" > "$OUT/tests_2gpu.log"
  fi
  wait $one_gpu
  wait $error_run
  for f in "$OUT"/tests_*.log; do echo "== $f: $(tail -1 "$f")"; grep FAILED "$f"; done
  grep "float32 reference\|relative L2" "$OUT/wan_error.log" || tail -3 "$OUT/wan_error.log"
  ;;
training)
  # both tests at once on all GPUs; tiny models. Alone on 4 H200s the resume test needed more than
  # 3 minutes; each run prints its losses as it ends, so a cut-off log still shows them
  timeout 540 python3 -m pytest -s -m gpu -p no:cacheprovider --tb=short tests/training -k resumes_exactly \
    --basetemp /tmp/pt_resume > "$OUT/tests_training_resume.log" 2>&1 &
  timeout 540 python3 -m pytest -s -m gpu -p no:cacheprovider --tb=short tests/training -k bf16 --basetemp /tmp/pt_bf16 \
    > "$OUT/tests_training_bf16.log" 2>&1
  wait
  for f in "$OUT"/tests_training_*.log; do echo "== $f: $(tail -1 "$f")"; grep -E "FAILED|^(straight|same|other|again) " "$f"; done
  ;;
wan)
  # timings only (the errors are in the tests phase). On 4 GPUs: 1 GPU beside TP=2, then both CP
  # modes at once on two GPU pairs; on 2 GPUs one after the other
  if [ "$GPUS" -ge 4 ]; then
    CUDA_VISIBLE_DEVICES=0 timeout 280 python3 tools/bench_wan.py --skip-error > "$OUT/wan_1gpu.log" 2>&1 &
    CUDA_VISIBLE_DEVICES=1,2 timeout 280 $TORCHRUN tools/bench_wan.py --tp 2 --sp --skip-diffusers --skip-error \
      > "$OUT/wan_tp2.log" 2>&1 &
    wait
    CUDA_VISIBLE_DEVICES=0,1 timeout 200 $TORCHRUN tools/bench_wan.py --cp 2 --cp-mode a2a --skip-diffusers \
      --skip-error > "$OUT/wan_cp_a2a.log" 2>&1 &
    CUDA_VISIBLE_DEVICES=2,3 timeout 200 $TORCHRUN tools/bench_wan.py --cp 2 --cp-mode p2p --skip-diffusers \
      --skip-error > "$OUT/wan_cp_p2p.log" 2>&1 &
    wait
  else
    CUDA_VISIBLE_DEVICES=0 timeout 200 python3 tools/bench_wan.py --skip-error > "$OUT/wan_1gpu.log" 2>&1
    timeout 130 $TORCHRUN tools/bench_wan.py --tp 2 --sp --skip-diffusers --skip-error > "$OUT/wan_tp2.log" 2>&1
    for mode in a2a p2p; do
      timeout 120 $TORCHRUN tools/bench_wan.py --cp 2 --cp-mode $mode --skip-diffusers --skip-error \
        > "$OUT/wan_cp_$mode.log" 2>&1
    done
  fi
  for f in "$OUT"/wan_*.log; do echo "== $f"; grep -A14 "^Wan " "$f" || tail -5 "$f"; done
  ;;
train)
  [ "$GPUS" -ge 4 ] || { echo "train needs 4 GPUs (found $GPUS)" >&2; exit 2; }
  # 6 iterations each (medians of 2 student and 2 critic iterations after the first of each), so
  # that 1 GPU and three 4-GPU layouts fit one call; the random teacher and shards are written first
  python3 tools/bench_train.py --prepare-only --work /tmp/bench > "$OUT/train_prepare.log" 2>&1
  B="python3 tools/bench_train.py --iters 6 --work /tmp/bench"
  timeout 130 $B --nproc 1 > "$OUT/train_n1.log" 2>&1
  timeout 140 $B --nproc 4 --tp 2 --sequence-parallel > "$OUT/train_tp2_dp2.log" 2>&1
  timeout 140 $B --nproc 4 > "$OUT/train_dp4.log" 2>&1
  timeout 140 $B --nproc 4 --tp 2 --cp 2 --sequence-parallel > "$OUT/train_tp2_cp2.log" 2>&1
  for f in "$OUT"/train_*.log; do echo "== $f"; tail -1 "$f"; done
  ;;
kernel)
  # on GPU 0, timings one after the other (timings taken while other GPUs of the host worked were
  # lower). The sweep (skipped with KERNEL_QUICK=1) starts on an empty Triton cache (it compiles every
  # candidate, about 3 minutes) and prints each case's table as it ends; the tests then run in four
  # processes at once (they time nothing, and compile on four cores), and the bench reuses the
  # compiled kernels
  export CUDA_VISIBLE_DEVICES=0 TRITON_CACHE_DIR=/tmp/triton_kernel_phase
  rm -rf "$TRITON_CACHE_DIR"
  quick=${KERNEL_QUICK:-0}
  [ "$quick" = 1 ] || timeout 270 python3 tools/tune_flash_jvp.py --json "$OUT/sweep.json" \
    > "$OUT/tune_flash_jvp.log" 2>&1
  PYTEST="timeout 170 python3 -m pytest -q -m gpu -p no:cacheprovider"
  $PYTEST tests/kernels/test_flash_jvp_hopper.py -k candidate > "$OUT/tests_kernels_candidates.log" 2>&1 &
  $PYTEST tests/kernels/test_flash_jvp_hopper.py -k matches_reference > "$OUT/tests_kernels_hopper_lengths.log" 2>&1 &
  $PYTEST tests/kernels/test_flash_jvp_hopper.py -k "not candidate and not matches_reference" \
    > "$OUT/tests_kernels_hopper.log" 2>&1 &
  $PYTEST tests/kernels --ignore tests/kernels/test_flash_jvp_hopper.py > "$OUT/tests_kernels_other.log" 2>&1 &
  wait
  timeout 80 python3 tools/bench_attention.py --shapes wan1.3b,cross,cross_odd --quick \
    --json "$OUT/bench_attention.json" > "$OUT/bench_attention.log" 2>&1
  if [ "$quick" != 1 ]; then
    sed -n '/^### fastest correct/,$p' "$OUT/tune_flash_jvp.log" | grep -v "^$" || tail -5 "$OUT/tune_flash_jvp.log"
    grep -c "| ok |" "$OUT/tune_flash_jvp.log"; grep -i "wrong\|failed" "$OUT/tune_flash_jvp.log" | head -8
  fi
  for f in "$OUT"/tests_kernels_*.log; do echo "== $f: $(tail -1 "$f")"; grep FAILED "$f" | head -5; done
  grep -q "^| shape | impl" "$OUT/bench_attention.log" && sed -n '/^| shape | impl/,$p' "$OUT/bench_attention.log" \
    || tail -5 "$OUT/bench_attention.log"
  ;;
cosmos)
  CUDA_VISIBLE_DEVICES=0 timeout 260 python3 tools/bench_cosmos.py --profile --json "$OUT/cosmos2b.json" \
    > "$OUT/cosmos2b.log" 2>&1
  CUDA_VISIBLE_DEVICES=0 timeout 100 python3 tools/bench_cosmos.py --preset cosmos-predict2-14b --layers 4 \
    --json "$OUT/cosmos14b_4layers.json" > "$OUT/cosmos14b_4layers.log" 2>&1
  if [ "$GPUS" -ge 2 ]; then
    for layout in "--tp 2 --sp" "--cp 2 --cp-mode a2a" "--cp 2 --cp-mode p2p"; do
      name=$(echo $layout | tr -d ' -')
      CUDA_VISIBLE_DEVICES=0,1 timeout 75 $TORCHRUN tools/bench_cosmos.py $layout --skip-diffusers --skip-error \
        > "$OUT/cosmos2b_$name.log" 2>&1
    done
  fi
  for log in "$OUT"/cosmos*.log; do echo "== $log"; grep -A10 "^Cosmos " "$log" || tail -5 "$log"; done
  # the 2B run's bf16 errors and kernel profiles
  sed -n '/_vs_fp32 (relative/,$p' "$OUT/cosmos2b.log" | grep -v "^$"
  ;;
generate)
  CUDA_VISIBLE_DEVICES=0 timeout 560 python3 tools/bench_generate.py --json "$OUT/generate_1gpu.json" \
    > "$OUT/generate_1gpu.log" 2>&1
  grep -A9 "^| stage" "$OUT/generate_1gpu.log" || tail -5 "$OUT/generate_1gpu.log"
  ;;
generate-cosmos)
  CUDA_VISIBLE_DEVICES=0 timeout 560 python3 tools/bench_generate.py --preset cosmos-predict2-2b --height 1024 \
    --width 1024 --num-frames 1 --teacher-steps 35 --guidance-scale 7 --json "$OUT/generate_cosmos.json" \
    > "$OUT/generate_cosmos.log" 2>&1
  grep -A9 "^| stage" "$OUT/generate_cosmos.log" || tail -5 "$OUT/generate_cosmos.log"
  ;;
plan)
  # a profile calibrated at each width, then each case trains 4 iterations with random weights
  # (Wan 1.3B with and without offloads and recompute; the 14B width, wan14b_rcm.yaml, with 6 blocks and
  # with 8 blocks and both offloads)
  flags=""
  [ -n "${PLAN_CASES:-}" ] && flags="--cases $PLAN_CASES"
  [ "${PLAN_CALIBRATE:-1}" = 0 ] && flags="$flags --skip-calibration"
  CUDA_VISIBLE_DEVICES=0 timeout 585 python3 tools/validate_plan.py --work /tmp/plan $flags \
    --json "$OUT/plan.json" > "$OUT/plan.log" 2>&1
  cp /tmp/plan/profile-*.json "$OUT/" 2>/dev/null
  grep -A12 "^| case" "$OUT/plan.log" || tail -20 "$OUT/plan.log"
  ;;
offload)
  # OFFLOAD_CACHES=1: then twice more, on empty Triton and TorchInductor caches and with TorchInductor's
  # caches off, to see whether what earlier phases left in the caches changes the resume's numbers
  offload_test() {  # $1: log name; the rest: variables for the test's processes
    local log=$1; shift
    env CUDA_VISIBLE_DEVICES=0 "$@" timeout 400 python3 -m pytest -s -m gpu -p no:cacheprovider --tb=short \
      tests/training/test_offload_gpu.py --basetemp "/tmp/pt_$log" > "$OUT/$log.log" 2>&1
    echo "$log: $(tail -1 "$OUT/$log.log")"
  }
  offload_test tests_offload
  if [ "${OFFLOAD_CACHES:-0}" = 1 ]; then
    rm -rf /tmp/offload_empty
    offload_test tests_offload_empty_caches TRITON_CACHE_DIR=/tmp/offload_empty/triton \
      TORCHINDUCTOR_CACHE_DIR=/tmp/offload_empty/inductor
    offload_test tests_offload_no_caches TORCHINDUCTOR_FORCE_DISABLE_CACHES=1
  fi
  ;;
ab)
  export CUDA_VISIBLE_DEVICES=0
  python3 tools/bench_train.py --prepare-only --work /tmp/bench > "$OUT/ab_prepare.log" 2>&1
  flags=$(keepattn_pick ab)
  # the matmul rate issue 23's figures imply, so that MFU compares across runs (docs/benchmarks.md)
  B="tools/bench_train.py --work /tmp/bench --iters 10 --matmul-tflops 778 -- $flags"
  for _ in $(seq "${AB_RUNS:-2}"); do
    (cd "$AB_BASE" && PYTHONPATH="$AB_BASE${PYTHONPATH:+:$PYTHONPATH}" timeout 200 python3 $B) >> "$OUT/ab_base.log" 2>&1
    timeout 200 python3 $B >> "$OUT/ab_new.log" 2>&1
  done
  echo "planner: $flags"
  python3 tools/compare_runs.py base="$OUT/ab_base.log" new="$OUT/ab_new.log"
  ;;
plain)
  export CUDA_VISIBLE_DEVICES=0
  python3 -c "from megatron_rcm.kernels import fa4; assert fa4.available(), 'flash-attn-4 does not import'" || exit 2
  timeout 200 python3 -m pytest -q -m gpu tests/kernels/test_fa4_gpu.py > "$OUT/fa4_tests.log" 2>&1
  tail -1 "$OUT/fa4_tests.log"
  timeout 300 python3 tools/bench_plain_attention.py --json "$OUT/plain_attention.json" > "$OUT/plain_attention.log" 2>&1
  grep "^|" "$OUT/plain_attention.log" || tail -5 "$OUT/plain_attention.log"
  ;;
coldstart)
  export CUDA_VISIBLE_DEVICES=0
  python3 tools/bench_train.py --prepare-only --work /tmp/bench > "$OUT/coldstart_prepare.log" 2>&1
  flags=$(keepattn_pick coldstart)
  B="python3 tools/bench_train.py --work /tmp/bench --iters 4"
  MEGATRON_RCM_FA4=0 timeout 170 $B --cache-dir /tmp/coldstart_sdpa --fresh-cache -- $flags > "$OUT/sdpa_cold.log" 2>&1
  for run in cold warm warm2; do
    timeout 170 $B --cache-dir /tmp/coldstart_fa4 $([ $run = cold ] && echo --fresh-cache) -- $flags \
      > "$OUT/fa4_$run.log" 2>&1
  done
  echo "planner: $flags"
  for run in sdpa_cold fa4_cold fa4_warm fa4_warm2; do
    tail -1 "$OUT/$run.log" | python3 -c "import json, sys; r = json.load(sys.stdin); print('$run', r['plain_attention'],
      'first student iteration %.1f s, from process start %.1f s' % (r['first_student_seconds'],
      r['seconds_to_first_iteration']))" 2>/dev/null || { echo "$run failed:"; tail -3 "$OUT/$run.log"; }
  done
  ;;
study)
  against=()
  [ -n "${STUDY_AGAINST:-}" ] && against=(--against "$STUDY_AGAINST")
  # shellcheck disable=SC2206  # the shapes are words
  [ -n "${STUDY_CONFIGS:-}" ] && against=(--configs $STUDY_CONFIGS)
  CUDA_VISIBLE_DEVICES=0 timeout 500 python3 tools/study_hopper_kernel.py "${against[@]}" \
    > "$OUT/study_hopper_kernel.log" 2>&1
  grep -v "^|" "$OUT/study_hopper_kernel.log" | tail -20
  grep "^|" "$OUT/study_hopper_kernel.log" || tail -5 "$OUT/study_hopper_kernel.log"
  ;;
keepattn)
  export CUDA_VISIBLE_DEVICES=0
  B="python3 tools/bench_train.py --work /tmp/bench --iters 6"
  python3 tools/bench_train.py --prepare-only --work /tmp/bench > "$OUT/keepattn_prepare.log" 2>&1
  # the first run compiles and autotunes (cold caches); the others reuse its caches
  # (KEEPATTN_PLAN=1: the planner's pick only, cold; when little device time is left)
  [ -z "${KEEPATTN_PLAN:-}" ] && timeout 180 $B > "$OUT/train_full.log" 2>&1
  [ -z "${KEEPATTN_PLAN:-}" ] && timeout 120 $B -- --recompute-keep-attention > "$OUT/train_full_keepattn.log" 2>&1
  if [ -n "${KEEPATTN_QUICK:-}" ]; then  # the two runs only (when little device time is left)
    for f in train_full train_full_keepattn; do echo "$f: $(tail -1 "$OUT/$f.log")"; done
    exit 0
  fi
  flags=$(keepattn_pick keepattn)
  timeout 180 $B -- $flags > "$OUT/train_plan_keepattn.log" 2>&1
  [ -z "${KEEPATTN_PLAN:-}" ] && timeout 90 python3 -m pytest -q -m gpu -p no:cacheprovider tests/training/test_recompute_keep_attention_gpu.py \
    > "$OUT/tests_keepattn.log" 2>&1
  [ -e "$OUT/tests_keepattn.log" ] && tail -1 "$OUT/tests_keepattn.log"
  echo "planner: $flags"
  for f in train_full train_full_keepattn train_plan_keepattn; do
    [ -e "$OUT/$f.log" ] && echo "$f: $(tail -1 "$OUT/$f.log")"
  done
  true
  ;;
digits-calib)
  export CUDA_VISIBLE_DEVICES=0
  for jobs in 1 12; do
    only=$([ $jobs = 1 ] && echo "--only rcm" || echo "")
    timeout 200 python3 tools/digits_study.py --phase a --out "$OUT/calib$jobs" --work /tmp/calib$jobs --minutes 3.2 \
      --teacher-minutes 0 --student-updates 100 --jobs $jobs $only > "$OUT/calib$jobs.log" 2>&1
    grep -E "done|stopped|failed|teacher:" "$OUT/calib$jobs/study.log"
    # one archive: the device tool brings back only a few files
    tar -czf "$OUT/calib$jobs.tar.gz" -C "$OUT" "calib$jobs" && rm -rf "$OUT/calib$jobs"
  done
  ;;
digits-a|digits-b)
  phase=${1#digits-}
  flags="--student-updates ${DIGITS_UPDATES:-400} --jobs ${DIGITS_JOBS:-12}"
  if [ "$phase" = a ]; then
    round=${DIGITS_ROUND:-16}  # rounds 2 to 16 keep the shipped teacher (round 1's GPU teacher lost on val FD)
    flags="$flags --round $round --teacher-minutes ${DIGITS_TEACHER_MINUTES:-$([ $round = 1 ] && echo 3 || echo 0)}"
    flags="$flags --teacher-workers 3"
    # beside the study, a GPU test that needs little of the GPU (default: keeping attention through a
    # full recompute, against a float32 model; tests/training/test_scm_only_gpu.py passed beside round 1)
    python3 -m pytest -q -m gpu -p no:cacheprovider "${DIGITS_BESIDE:-tests/training/test_recompute_keep_attention_gpu.py}" \
      > "$OUT/tests_beside.log" 2>&1 &
  else
    flags="$flags --choice ${DIGITS_A:-runs/digits_a}/choice.json"
  fi
  RESULTS=/tmp/digits_results_$phase
  # the whole study stops itself at --minutes, keeping what finished
  CUDA_VISIBLE_DEVICES=0 timeout $(( ${DIGITS_MINUTES_S:-500} + 30 )) python3 tools/digits_study.py --phase $phase \
    --out "$RESULTS" --work /tmp/digits_$phase --minutes $(python3 -c "print(${DIGITS_MINUTES_S:-500} / 60)") $flags \
    > "$RESULTS.log" 2>&1
  wait
  cp "$RESULTS.log" "$RESULTS/"
  # one archive: the device tool brings back only a few files
  tar -czf "$OUT/digits_$phase.tar.gz" -C "$RESULTS" .
  # what phase B needs, kept in the tree (runs/ is ignored): a warm machine finds it, a fresh one
  # needs it carried
  if [ "$phase" = a ] && [ -e "$RESULTS/choice.json" ]; then
    rm -rf runs/digits_a && mkdir -p runs/digits_a && cp "$RESULTS/choice.json" runs/digits_a/
    [ -d "$RESULTS/teacher" ] && cp -r "$RESULTS/teacher" runs/digits_a/
  fi
  if [ "$phase" = a ]; then tail -3 "$OUT/tests_beside.log"; table=ablations; else table=table; fi
  cat "$RESULTS/study.log" "$RESULTS/targets.md" 2>/dev/null
  [ -e "$RESULTS/${table}.md" ] && cut -c1-160 "$RESULTS/${table}.md"
  ;;
profile)
  # one after the other on GPU 0 (timings beside other work are lower); the caches of the cold run
  # are what the warm run and the profile reuse. TRITON_PRINT_AUTOTUNING logs each autotuning's time
  export CUDA_VISIBLE_DEVICES=0 TRITON_PRINT_AUTOTUNING=1
  W=/tmp/bench C=/tmp/first_cache
  B="python3 tools/bench_train.py --work $W"
  python3 tools/bench_train.py --prepare-only --work $W > "$OUT/profile_prepare.log" 2>&1
  # 6 iterations: the 2nd and 3rd student and critic iterations give full recompute's times (one
  # iteration each varied by 5% between two runs); the warm run needs only the first of each
  timeout 180 $B --iters 6 --cache-dir $C --fresh-cache > "$OUT/first_cold.log" 2>&1
  timeout 110 $B --iters 2 --cache-dir $C > "$OUT/first_warm.log" 2>&1
  TRITON_CACHE_DIR=$C/triton TORCHINDUCTOR_CACHE_DIR=$C/inductor timeout 150 python3 tools/profile_train.py \
    --work $W --iters 4 --json "$OUT/profile.json" > "$OUT/profile.log" 2>&1
  # the planner's fastest layout for this card's memory: block recompute of the fewest blocks that fit
  gib=$(python3 -c "import torch; print(torch.cuda.mem_get_info()[1] / 2**30)")
  python3 tools/plan.py --model wan2.1-t2v-1.3b --gpus 1 --gpu-memory-gib "$gib" --json > "$OUT/profile_plan.json" \
    2>> "$OUT/profile_prepare.log"
  best() { python3 -c "import json, sys; v = json.load(open(sys.argv[1]))['layouts'][0][sys.argv[2]]
print(*v) if isinstance(v, list) else print(v)" "$OUT/profile_plan.json" "$1"; }
  flags=$(best flags)
  if ! timeout 120 $B --iters 6 --cache-dir $C -- $flags > "$OUT/train_block.log" 2>&1; then
    # the fake score's count is the least measured part of the memory model: if the run failed
    # (out of memory), the student's count for both networks
    echo "== again with the student's count for the fake score" >> "$OUT/train_block.log"
    timeout 100 $B --iters 4 --cache-dir $C -- $flags --fake-score-recompute-num-layers "$(best recompute_blocks)" \
      >> "$OUT/train_block.log" 2>&1
  fi
  sed -n '/^student iteration/,/^torch.compile counters/p' "$OUT/profile.log" | grep . || tail -20 "$OUT/profile.log"
  compile_summary
  python3 - "$OUT" <<'EOF'
import json, re, sys
out = sys.argv[1]
def text(name):
    try:
        return open(f"{out}/{name}").read()
    except OSError:
        return ""
def last_json(name):
    try:
        return json.loads(text(name).strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {}
keys = ("first_student_seconds", "first_fake_score_seconds", "seconds_to_first_iteration", "student_seconds",
        "fake_score_seconds", "student_mfu", "fake_score_mfu", "peak_memory_gib")
for name in ("first_cold.log", "first_warm.log", "train_block.log"):
    r = last_json(name)
    tuned = [float(s) for s in re.findall(r"^finished after ([0-9.]+)s", text(name), re.M)]
    print(f"== {name}:", {k: round(r[k], 3) for k in keys if r.get(k) is not None} or "no result (see the log)",
          f"| Triton autotunings not from the cache: {len(tuned)}, {sum(tuned):.1f} s")
plan = json.loads(text("profile_plan.json") or "{}").get("layouts") or [{}]
print("planner:", " ".join(plan[0].get("flags", [])),
      {k: plan[0].get(k) for k in ("peak_memory_gib", "student_seconds", "critic_seconds")})
EOF
  ;;
profile-plan)
  export CUDA_VISIBLE_DEVICES=0
  W=/tmp/bench C=/tmp/plan_cache
  B="python3 tools/bench_train.py --work $W --iters 6 --cache-dir $C"
  python3 tools/bench_train.py --prepare-only --work $W > "$OUT/profile_prepare.log" 2>&1
  flags=$(keepattn_pick profile)
  # torch's default caching allocator (cold caches first), then expandable segments, then the default
  # again, both on warm caches: the allocator's retries near the card's limit, and what they cost
  # (PROFILE_ONLY=1: the profile alone, on cold caches)
  runs=$([ -z "${PROFILE_ONLY:-}" ] && echo default expandable default_warm)
  for run in $runs; do
    conf=$([ $run = expandable ] && echo expandable_segments:True || echo "")
    PYTORCH_CUDA_ALLOC_CONF=$conf timeout 200 $B -- $flags > "$OUT/train_$run.log" 2>&1
  done
  # TORCH_LOGS=recompiles: every torch.compile recompilation and its reason, in the log
  PYTORCH_CUDA_ALLOC_CONF=${PROFILE_ALLOC-} TRITON_CACHE_DIR=$C/triton \
    TORCHINDUCTOR_CACHE_DIR=$C/inductor TORCH_LOGS=recompiles timeout 240 python3 tools/profile_train.py \
    --work $W --iters ${PROFILE_ITERS:-4} --top ${PROFILE_TOP:-15} --json "$OUT/profile.json" -- $flags > "$OUT/profile.log" 2>&1
  echo "planner: $flags"
  echo "recompilations: $(grep -c "Recompiling" "$OUT/profile.log")"
  grep -A2 "Recompiling" "$OUT/profile.log" | cut -c1-300 | head -24
  for run in $runs; do
    python3 -c "import json, sys; r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(sys.argv[2], {k: r.get(k) for k in ('student_seconds', 'fake_score_seconds', 'student_mfu', 'fake_score_mfu',
      'matmul_tflops_per_gpu', 'first_student_seconds', 'peak_memory_gib', 'alloc_retries', 'allocator')})" \
      "$OUT/train_$run.log" $run 2>/dev/null || echo "$run: $(tail -2 "$OUT/train_$run.log")"
  done
  sed -n '/^student iteration/,/^torch.compile counters/p' "$OUT/profile.log" | grep . || tail -20 "$OUT/profile.log"
  compile_summary
  ;;
generate2)
  for layout in "--tp 2" "--cp 2"; do
    name=$(echo $layout | tr -d ' -')
    CUDA_VISIBLE_DEVICES=0,1 timeout 280 $TORCHRUN tools/bench_generate.py $layout --json "$OUT/generate_$name.json" \
      > "$OUT/generate_$name.log" 2>&1
    grep -A9 "^| stage" "$OUT/generate_$name.log" || tail -5 "$OUT/generate_$name.log"
  done
  ;;
esac
