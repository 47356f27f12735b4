"""The report stage: a run's files read back (read.py), its pages (pages.py, plots.py, html.py), the writer
and the `leantune report` command (write.py), the model card (card.py).

Imports go down only: read.py <- pages.py <- write.py; nothing here imports train/ or the recipes.
"""
