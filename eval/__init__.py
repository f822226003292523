"""`optidel eval`: does a selection pre-train well? Pre-train a small MAE on each arm's shards
for the same compute, then score the frozen encoder with a linear probe (primary) and a
low-label fine-tune (secondary) on a labeled set; report mIoU, paired differences with
bootstrap intervals, and NormDEL.

Modules: settings (the one EvalConfig), labeled (image/mask folders and their fixed
train/validation/test split), pools (the plain and video-like pre-training pools of the
reference benchmark), arms (an `optidel run` output as pre-training data), pretrain (MAE on a
shard stream for a fixed number of optimizer steps), probe (the linear probe on frozen patch
tokens), segmentation (encoder + light decoder, fine-tune, per-image counts), units (one arm x
seed, the encoder cache, worker processes), stats (paired bootstrap), metrics (mIoU, DEL,
NormDEL), harness (arms x seeds, cached per unit), report (results.json, Markdown table, PNG),
command (the CLI arguments).
"""
