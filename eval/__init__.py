"""`optidel eval`: does a selection pre-train well? Pre-train a small MAE on each arm's shards
for the same compute, fine-tune a segmenter on a labeled set, report mIoU and NormDEL.

Modules: metrics (mIoU, DEL, NormDEL), labeled (image/mask folders and their fixed split),
arms (an `optidel run` output as pre-training data), optim (the shared AdamW schedule),
pretrain (MAE on a shard stream for a fixed number of optimizer steps), segmentation (encoder
+ light decoder, fine-tune, test), harness (arms x seeds, cached per unit), report
(results.json, Markdown table, PNG), command (the CLI arguments).
"""
