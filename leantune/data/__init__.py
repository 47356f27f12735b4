"""The data stage: GLUE tasks and their official files, the user's own files, tokenizing with `Dataset.map`,
and batching (dynamic padding, shuffled / length-grouped / resumable samplers).

    tasks.py    the GLUE task registry       files.py    CSV/TSV/JSON/JSONL/Parquet files
    load.py     GLUE loading, load_data, tokenize (cached)   collate.py  collator and batch samplers

Imports go down only: this package uses problem.py, errors.py and config-free helpers, never train/ or report/.
"""
