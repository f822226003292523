"""The selection, between pass 1 and pass 2, by Ray tasks over the pass-1 parts (plan.py):
duplicates.py, then rows.py (each part's competing patches or images), engine.py (the choice
by the selector's traits, selectors.py; round_robin.py, embeddings.py, keys.py), ranks.py,
write.py (sources.parquet, patches.parquet); spool.py carries the tasks' results."""
