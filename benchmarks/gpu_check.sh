#!/usr/bin/env bash
# Is this GPU ready for the ImageNet suites? One command, nothing downloaded, about
# 5-8 minutes on one H100; prints one Markdown table and writes it to OUT/gpu_check.md:
#   - VGG-16 224 px train-step images/s, TFLOP/s and % of the bf16 dense peak, for
#     baseline and swwae_all, compile off and on, on synthetic input and fed from a
#     .beton of generated JPEGs through FFCV;
#   - an NCCL all_reduce under torchrun;
#   - a device=cuda end-to-end run of a tiny ImageNet-shaped suite under torchrun, to
#     its report.
#
#   bash benchmarks/gpu_check.sh [OUT]    # OUT: $1, else $OUT, else ./gpu_check_out
#
# PYTHON (default: python) runs the parts, benchmarks/gpu_check.py's subcommands (its
# docstring says what each measures); GPU_CHECK_NPROC processes for the end-to-end run
# (1: a process group needs two or more; the NCCL row checks NCCL itself);
# GPU_CHECK_FLAGS="--cpu --tiny" runs every part small on the CPU (the tests do);
# GPU_CHECK_TIMEOUT (300) seconds at most for the timed steps (a hung compile) and for
# each torchrun part (a hung collective).
# Exit status 1 if a part failed (its row says how; the table is written anyway).
set -uo pipefail

out="${1:-${OUT:-./gpu_check_out}}"
python="${PYTHON:-python}"
nproc="${GPU_CHECK_NPROC:-1}"
limit="${GPU_CHECK_TIMEOUT:-300}"
read -r -a flags <<<"${GPU_CHECK_FLAGS:-}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
check="$repo/benchmarks/gpu_check.py"
failed=0

part() { "$python" "$check" "${flags[@]}" "$@" || failed=1; }
torchrun() {
    timeout "$limit" "$python" -m torch.distributed.run --standalone --nproc_per_node="$1" "${@:2}"
}

mkdir -p "$out" || exit 2
"$python" "$check" "${flags[@]}" data "$out" || exit 1
timeout "$limit" "$python" "$check" "${flags[@]}" step "$out" || failed=1  # a hung compile
torchrun 1 "$check" "${flags[@]}" nccl "$out" || failed=1
if keys="$("$python" "$check" "${flags[@]}" e2e-args "$out")"; then
    mapfile -t e2e <<<"$keys"
    start=$SECONDS
    rc=0
    (cd "$repo" && torchrun "$nproc" -m harness.run "${e2e[@]}") >"$out/e2e.log" 2>&1 || rc=$?
    [ "$rc" -eq 0 ] || failed=1
    part e2e-record "$out" --rc "$rc" --seconds "$((SECONDS - start))"
else
    failed=1
fi
part table "$out"
exit "$failed"
