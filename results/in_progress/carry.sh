#!/usr/bin/env bash
# Copy a reference suite's records from a results root into results/in_progress/<suite>/
# so that the next session resumes it (README.md beside this file says what and why).
#   bash results/in_progress/carry.sh RESULTS_ROOT SUITE
# Finished runs: their record without checkpoint.pt (a baseline keeps stage-pretrain.pt,
# the step-1 weights the decoding runs start from). Started runs: config.yaml,
# history.csv, checkpoint.pt, tensorboard/ and the stage-<name>.pt of the stages they
# finished (a resumed run does not write those again; later runs may start from them).
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: bash $0 RESULTS_ROOT SUITE" >&2; exit 2; }
src="$1/$2"
dst="$(cd "$(dirname "$0")" && pwd)/$2"
[ -d "$src" ] || { echo "error: no suite folder $src" >&2; exit 2; }
for run in "$src"/*/; do
    run="${run%/}"
    id="$(basename "$run")"
    [ -f "$run/config.yaml" ] || continue  # local/, report/, splits
    if [ -f "$run/metrics.json" ]; then
        files=(config.yaml metrics.json history.csv correct.json predictions.npz samples.png)
        grep -q "  method: baseline" "$run/config.yaml" && files+=(stage-pretrain.pt)
    elif [ -f "$run/checkpoint.pt" ]; then
        files=(config.yaml history.csv checkpoint.pt)
        for stage in "$run"/stage-*.pt; do
            [ -f "$stage" ] && files+=("$(basename "$stage")")
        done
    else
        continue
    fi
    rm -rf "${dst:?}/$id"
    mkdir -p "$dst/$id"
    for f in "${files[@]}"; do
        [ -f "$run/$f" ] && cp "$run/$f" "$dst/$id/"
    done
    [ -d "$run/tensorboard" ] && cp -r "$run/tensorboard" "$dst/$id/"
    state=started
    [ -f "$run/metrics.json" ] && state=done
    echo "$id $state"
done
