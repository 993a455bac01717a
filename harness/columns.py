"""The error columns of the report's table: one list that the config (what a
``published:`` entry or a claim may name), the engine's ``metrics.json`` and the
report share. Imports nothing, so the report still loads no torch."""

# (metrics.json key, title), in the paper's table order
ERROR_COLUMNS = (
    ("top1_train", "top-1 train"),
    ("top1_val", "top-1 val"),
    ("top5_train", "top-5 train"),
    ("top5_val", "top-5 val"),
    ("dense_top1_val", "dense top-1 val"),
    ("dense_top5_val", "dense top-5 val"),
)
ERROR_METRICS = tuple(key for key, _ in ERROR_COLUMNS)
