#!/usr/bin/env bash
# Does OptiDEL's 5% pre-train as well as the whole pool, and better than a random 5%? The
# reference `optidel eval` table on kvasir-seg.
#
# 1. kvasir-seg's split, fixed by sorted name: the last 200 pairs test, the 100 before them
#    validate, the first 700 train. Only the 700 train images enter a pre-training pool.
# 2. Two pools, both built here from those 700 images (`optidel eval --write-...`):
#    - video (default): each image becomes a clip of 192-px frames along a seeded camera path,
#      clip lengths log-uniform on 1..16 frames: 3743 frames, as redundant and uneven as video;
#    - plain: the 700 images themselves.
# 3. Arms built from the pool by `optidel run`: full (every image, R = 1) and 5% by the random,
#    dedup, hard and optidel selectors, plus ablations of optidel's selection (below). dedup,
#    hard and the ablations reuse the optidel arm's scored pass 1 (benchmarks/reselect.py):
#    they differ from it only in the barrier and pass 2.
# 4. `optidel eval` on the arms: equal pre-training compute, a linear probe on the frozen
#    encoder (primary) and a fine-tune on 70 labeled pairs (secondary), 8 paired seeds, the
#    scratch control, paired bootstrap intervals against random, full and scratch.
#
#   benchmarks/eval_kvasir.sh                                  # the main table: video pool, validation split
#   SPLIT=test benchmarks/eval_kvasir.sh                       # the same arms and encoders, test split (once)
#   ARMS="dedup hard optidel-window optidel-mosaic1" benchmarks/eval_kvasir.sh   # more rows, same cache
#   POOL=plain benchmarks/eval_kvasir.sh                       # the plain 700-image pool
#
# Arguments after the script name go to `optidel eval` as they are. Environment: KVASIR (the
# dataset), WORK (pools, arms and the encoder cache; a rerun resumes them), RESULTS (where the
# table and command.txt go; a rerun reuses finished units), POOL, SPLIT, ARMS.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
KVASIR="${KVASIR:-$REPO/../shared/datasets/kvasir-seg}"
WORK="${WORK:-/tmp/optidel-eval-kvasir}"
POOL="${POOL:-video}"
SPLIT="${SPLIT:-validation}"
ARMS="${ARMS:-full random optidel}"
RESULTS="${RESULTS:-$REPO/benchmarks/results/eval/$POOL-$SPLIT}"
mkdir -p "$WORK/arms-$POOL" "$RESULTS"

case "$POOL" in
    video)
        [ -d "$WORK/video" ] || optidel eval --write-video-pool "$WORK/video.tmp" --labeled "$KVASIR" >/dev/null
        [ -d "$WORK/video" ] || mv "$WORK/video.tmp" "$WORK/video"
        input="$WORK/video"
        description="kvasir-seg video frames, $(find "$input" -name '*.jpg' | wc -l) (clips of 1-16 frames over the 700 train images)"
        ;;
    plain)
        optidel eval --write-pool-list "$WORK/plain.txt" --labeled "$KVASIR" >/dev/null
        input="$WORK/plain.txt"
        description="kvasir-seg train images, 700"
        ;;
    *) echo "eval_kvasir.sh: unknown POOL $POOL (video, plain)" >&2; exit 2 ;;
esac

# Arms that differ from optidel only after pass 1: their selection settings.
reselected() {
    case "$1" in
        hard | dedup) echo "selector=$1" ;;
        optidel-window) echo "select.trim_top_frac=0.5" ;;     # skip the hardest half: a hardness window
        optidel-mosaic1) echo "mosaic=1" ;;                     # one patch per output image
        optidel-clusters8) echo "select.clusters=8" ;;         # less diversity pressure
        optidel-loose) echo "select.near_duplicate_cosine=0.99 select.per_source_cap=16" ;;
        optidel-window-mosaic1) echo "select.trim_top_frac=0.5 mosaic=1" ;;   # both levers that won alone
        optidel-easy-mosaic1) echo "select.trim_top_frac=0.9 mosaic=1" ;;     # only the easiest tenth is eligible
        *) return 1 ;;
    esac
}

build() {  # build NAME: the arm's `optidel run` output under $WORK (a finished one is left as it is)
    local arm=$1 out="$WORK/arms-$POOL/$1" settings sets=()
    if [ -f "$out/run.json" ] && grep -q '"status": "complete"' "$out/run.json"; then
        return
    fi
    if settings=$(reselected "$arm"); then
        build optidel
        for kv in $settings; do sets+=(--set "$kv"); done
        [ -d "$out" ] || python "$REPO/benchmarks/reselect.py" "$WORK/arms-$POOL/optidel" "$out" $settings >/dev/null
    else
        case "$arm" in
            full) sets=(--selector random --keep 1.0) ;;
            random | optidel) sets=(--selector "$arm") ;;
            optidel-proxy1200) sets=(--selector optidel --set score.mae.train_steps=1200) ;;  # a 4x longer-trained proxy
            optidel-shared-masks) sets=(--selector optidel --set score.shared_masks=true) ;;  # every patch scored under the same masks
            *) echo "eval_kvasir.sh: unknown arm $arm" >&2; exit 2 ;;
        esac
    fi
    local start=$SECONDS
    optidel run "$input" -o "$out" --seed 0 "${sets[@]}" >"$out.log" 2>&1 \
        || { echo "eval_kvasir.sh: building arm $arm failed; see $out.log" >&2; exit 1; }
    echo "arm $arm built in $((SECONDS - start)) s (log: $out.log)"
}

SECONDS=0
arm_flags=()
for arm in $ARMS; do
    build "$arm"
    arm_flags+=(--arm "$arm=$WORK/arms-$POOL/$arm")
done
built=$SECONDS

eval_flags=(--labeled "$KVASIR" --out "$RESULTS" --encoders "$WORK/encoders-$POOL" --split "$SPLIT"
            --pool "$description" --jobs 2 --threads 1)
{
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), $(nproc) CPUs, code at $(git -C "$REPO" describe --always --dirty)"
    echo "POOL=$POOL SPLIT=$SPLIT ARMS=\"$ARMS\" benchmarks/eval_kvasir.sh $*"
    echo "optidel eval ${arm_flags[*]} ${eval_flags[*]} $*"
    echo "# Settings: optidel eval's defaults plus the flags above, all fixed on the validation split before"
    echo "# any test run; each arm's selection settings are in its run.json (ablations: reselected() above)."
} >> "$RESULTS/command.txt"
optidel eval "${arm_flags[@]}" "${eval_flags[@]}" "$@"
echo "arms built in ${built} s; eval in $((SECONDS - built)) s" | tee -a "$RESULTS/command.txt"
