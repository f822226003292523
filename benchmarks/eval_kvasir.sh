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
#   POOL=dirty COMPOSITION=1 ARMS="random optidel cleanvision lightly oracle" benchmarks/eval_kvasir.sh
#                         # what each selection contains on the dirty pool (truth.csv), no pre-training
#   POOL=dirty SPLIT=test ARMS="full random oracle optidel-ungated optidel cleanvision lightly" \
#       benchmarks/eval_kvasir.sh --seeds 3          # the dirty pool's downstream table, CPU-sized
#   POOL=dirty SPLIT=test ARMS="full random oracle optidel-ungated optidel cleanvision lightly" \
#       RESULTS=benchmarks/results/eval/dirty-test-gpu WORK=/tmp/optidel-eval-gpu \
#       benchmarks/eval_kvasir.sh --device cuda --model small --size 224 --steps 5000 --batch-size 256 --jobs 1 --seeds 3
#                         # the same table on a GPU (--jobs 1: one unit at a time on the one device)
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
    dirty | dirty-heldout | dirty-recordings | dirty-heldout-recordings)
        # The video pool with 45% artefact frames and frozen clips (truth.csv beside the frames):
        # `dirty` from the train images (settings are chosen on it), `dirty-heldout` from the
        # validation and test images with another seed (composition only: the leak guard refuses
        # to pre-train on it; no setting is chosen on it). `-recordings`: the same frames, each
        # clip one lossless video, so the per-recording cap (select.video_cap_window_s) applies.
        from=train seed=0 as=()
        case "$POOL" in dirty-heldout*) from=held-out seed=1 ;; esac
        case "$POOL" in *-recordings) as=(--recordings) ;; esac
        [ -d "$WORK/$POOL" ] || optidel eval --write-video-pool "$WORK/$POOL.tmp" --artefacts 0.45 \
            --pool-from "$from" --pool-seed "$seed" "${as[@]}" --labeled "$KVASIR" >/dev/null
        [ -d "$WORK/$POOL" ] || mv "$WORK/$POOL.tmp" "$WORK/$POOL"
        input="$WORK/$POOL"
        description="kvasir-seg dirty video frames, $(($(wc -l < "$input/truth.csv") - 1)) ($from images, 45% artefacts)"
        ;;
    *) echo "eval_kvasir.sh: unknown POOL $POOL (video, plain, dirty, dirty-heldout, dirty-recordings, dirty-heldout-recordings)" >&2; exit 2 ;;
esac

# The proposer's artefact gates. `optidel-ungated` has none but the black border's (the default
# until 2026-12-07, the `optidel` of the tables committed before then); `optidel-gates` the glare
# and noise gates at 1% blown-out pixels and 10 grey levels (the default from then until
# 2026-12-08, the `optidel` of the tables committed in between); `optidel-allgates` adds over-exposure
# and heavy compression and takes noise from 6 grey levels (the default for part of 2026-12-08); `optidel` and
# `optidel-frameclip30` today's default, which adds the frame-wide over-exposure gate.
NO_FRAME_GATE=(--set propose.max_frame_clipped_frac=1)
UNGATED=(--set propose.max_bright_frac=1 --set propose.max_noise_sigma=null --set propose.max_clipped_frac=1
         --set propose.max_blockiness=null "${NO_FRAME_GATE[@]}")
TWO_GATES=(--set propose.max_noise_sigma=10 --set propose.max_clipped_frac=1 --set propose.max_blockiness=null
           "${NO_FRAME_GATE[@]}")

# Arms that differ from another arm only after pass 1: that arm, then their selection settings.
reselected() {
    case "$1" in
        hard | dedup) echo "optidel selector=$1" ;;
        optidel-window) echo "optidel select.trim_top_frac=0.5" ;;     # skip the hardest half: a hardness window
        optidel-mosaic1) echo "optidel mosaic=1" ;;                     # one patch per output image
        optidel-clusters8) echo "optidel select.clusters=8" ;;         # less diversity pressure
        optidel-loose) echo "optidel select.near_duplicate_cosine=0.99 select.per_source_cap=16" ;;
        optidel-window-mosaic1) echo "optidel select.trim_top_frac=0.5 mosaic=1" ;;   # both levers that won alone
        optidel-easy-mosaic1) echo "optidel select.trim_top_frac=0.9 mosaic=1" ;;     # only the easiest tenth is eligible
        optidel-gates-window) echo "optidel-gates select.trim_top_frac=0.5" ;;
        optidel-gates-mosaic1) echo "optidel-gates mosaic=1" ;;
        optidel-gates-window-mosaic1) echo "optidel-gates select.trim_top_frac=0.5 mosaic=1" ;;
        # Tried on the dirty train pool after the gates, none better than the gates alone:
        optidel-gates-trim10 | optidel-gates-trim20 | optidel-gates-trim30)   # a narrower hardness window
            echo "optidel-gates select.trim_top_frac=0.${1#optidel-gates-trim}" ;;
        optidel-gates-clusters64) echo "optidel-gates select.clusters=64" ;;
        optidel-gates-nd90) echo "optidel-gates select.near_duplicate_cosine=0.9" ;;
        optidel-gates-mosaic1-clusters64) echo "optidel-gates mosaic=1 select.clusters=64" ;;
        optidel-gates-mosaic1-nd90) echo "optidel-gates mosaic=1 select.near_duplicate_cosine=0.9" ;;
        # On a -recordings pool (one video a clip, one frame a second): the cap per frame, as a
        # folder of frames has it, and per whole clip (none is longer than 16 s), against the
        # default of per_source_cap patches per 10 s of a recording.
        optidel-capframe) echo "optidel select.video_cap_window_s=1" ;;
        optidel-capclip) echo "optidel select.video_cap_window_s=16" ;;
        optidel-mosaic1-capframe) echo "optidel mosaic=1 select.video_cap_window_s=1" ;;
        optidel-mosaic1-capclip) echo "optidel mosaic=1 select.video_cap_window_s=16" ;;
        *) return 1 ;;
    esac
}

build() {  # build NAME: the arm's `optidel run` output under $WORK (a finished one is left as it is)
    local arm=$1 out="$WORK/arms-$POOL/$1" settings sets=() input_override=""
    if [ -f "$out/run.json" ] && grep -q '"status": "complete"' "$out/run.json"; then
        return
    fi
    if settings=$(reselected "$arm"); then
        local base=${settings%% *}
        settings=${settings#* }
        build "$base"
        for kv in $settings; do sets+=(--set "$kv"); done
        [ -d "$out" ] || python "$REPO/benchmarks/reselect.py" "$WORK/arms-$POOL/$base" "$out" $settings >/dev/null
    else
        case "$arm" in
            full) sets=(--selector random --keep 1.0) ;;
            random | optidel) sets=(--selector "$arm") ;;
            optidel-proxy1200) sets=(--selector optidel --set score.mae.train_steps=1200) ;;  # a 4x longer-trained proxy
            optidel-shared-masks) sets=(--selector optidel --set score.shared_masks=true) ;;  # every patch scored under the same masks
            # Artefact gates in the proposer (pass 1), thresholds from benchmarks/gate_measures.py on
            # the dirty train pool: none, glare only, sensor noise only, both (the default until
            # 2026-12-08); then over the two, heavy compression (block-edge ratio above 2),
            # over-exposure (a channel clipped on more than 40% of the crop), noise above 6 grey
            # levels instead of 10, and all three; then a frame with a channel clipped on more than
            # 30% of its lit pixels loses every crop (today's default).
            optidel-ungated) sets=(--selector optidel "${UNGATED[@]}") ;;
            optidel-glare) sets=(--selector optidel "${TWO_GATES[@]}" --set propose.max_noise_sigma=null) ;;
            optidel-noise) sets=(--selector optidel "${TWO_GATES[@]}" --set propose.max_bright_frac=1) ;;
            optidel-gates) sets=(--selector optidel "${TWO_GATES[@]}") ;;
            optidel-block2) sets=(--selector optidel "${TWO_GATES[@]}" --set propose.max_blockiness=2) ;;
            optidel-clip40) sets=(--selector optidel "${TWO_GATES[@]}" --set propose.max_clipped_frac=0.4) ;;
            optidel-noise6) sets=(--selector optidel "${TWO_GATES[@]}" --set propose.max_noise_sigma=6) ;;
            optidel-allgates) sets=(--selector optidel "${NO_FRAME_GATE[@]}") ;;
            optidel-frameclip30) sets=(--selector optidel --set propose.max_frame_clipped_frac=0.3) ;;
            # Hardness over a Gaussian low-pass of the patch (sigma in proxy pixels): fine detail
            # that no model predicts (noise, compression blocks) no longer counts as hard.
            optidel-lowpass1 | optidel-lowpass2) sets=(--selector optidel --set "score.lowpass_sigma=${arm#optidel-lowpass}") ;;
            # The tools a user would pick instead: a list of frames, every one a sample.
            cleanvision | lightly | oracle)
                local scored=()
                [ "$arm" = lightly ] && { build optidel; scored=(--scored "$WORK/arms-$POOL/optidel"); }
                optidel eval --write-peer-list "$arm=$out.txt" --frames "$input" "${scored[@]}" >/dev/null
                input_override="$out.txt"
                sets=(--selector random --keep 1.0) ;;
            *) echo "eval_kvasir.sh: unknown arm $arm" >&2; exit 2 ;;
        esac
    fi
    local start=$SECONDS
    optidel run "${input_override:-$input}" -o "$out" --seed 0 "${sets[@]}" >"$out.log" 2>&1 \
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

if [ "${COMPOSITION:-0}" = 1 ]; then  # what each selection contains, by the pool's truth.csv: seconds
    build optidel
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ), code at $(git -C "$REPO" describe --always --dirty)" >> "$RESULTS/command.txt"
    echo "POOL=$POOL COMPOSITION=1 ARMS=\"$ARMS\" benchmarks/eval_kvasir.sh $*" >> "$RESULTS/command.txt"
    optidel eval --composition "${arm_flags[@]}" --scored "$WORK/arms-$POOL/optidel" --out "$RESULTS" "$@"
    exit
fi
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
