#!/usr/bin/env bash
# Runs the CNO equivariance experiments of docs/cno-equivariance.md, one job at a time.
#
#   tools/cno_experiments/run.sh OUT [VARIANT ...]     # default: every variant, seeds 0-2
#
# (variants: make_studies.py; seed 0 of each variant runs first, then seeds 1 and 2).
#
# Each variant/seed is the quick study restricted to CNO with one change (make_studies.py);
# its results land in OUT/runs/<variant>.s<seed>/ and its log in OUT/logs/. Runs already
# finished (results present) are skipped, so the script can be resumed. Afterwards
#   python3 tools/cno_experiments/summarize.py OUT
# prints the table. Needs `cargo build --release --example benchmark --example infer`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:?usage: run.sh OUT [VARIANT ...]}"
shift
bin="${CARGO_TARGET_DIR:-$root/target}/release/examples"
mkdir -p "$out/studies" "$out/runs" "$out/logs"
variants=("$@")
if [ ${#variants[@]} -eq 0 ]; then
    variants=(base init time_replicate time_causal bn no_normalizer time_reflect space_reflect
        both_replicate long grid100 paper_model augmented)
fi
python3 "$here/make_studies.py" studies "$here/base.json" "$out/studies" "${variants[@]}"
# Seed 0 of every variant first, then seed 1, then seed 2.
for study in $(for s in 0 1 2; do for v in "${variants[@]}"; do echo "$out/studies/$v.s$s.json"; done; done); do
    name="$(basename "$study" .json)"
    run="$out/runs/$name"
    if [ -f "$run/results.json" ]; then
        continue
    fi
    echo "$(date -u +%H:%M:%S) $name" >&2
    # The augmented variant is the study's delay-augmentation remedy; the others are CNO in
    # the paper's setting with one change.
    remedies=none
    case "$name" in augmented.*) remedies=augmentation ;; esac
    nice -n 5 "$bin/benchmark" --protocol "$study" --remedies "$remedies" --quiet --out "$run" \
        > "$out/logs/$name.log" 2>&1 || echo "  $name failed (see $out/logs/$name.log)" >&2
    # The response to a zero current, in physical units (the rest state is v = w = 0).
    # Each study runs one job, its seed the file's .sN suffix.
    seed="${name##*.s}"
    ckpt="$run/models/cno/seed-$seed/last.safetensors"
    if [ -f "$ckpt" ]; then
        python3 "$here/zero_input.py" write "$run/zero_in.npy" "$study"
        "$bin/infer" --checkpoint "$ckpt" \
            --input "$run/zero_in.npy" --out "$run/zero_out.npy" >> "$out/logs/$name.log" 2>&1 || true
    fi
done
