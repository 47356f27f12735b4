"""`leantune glue`, the whole GLUE benchmark in one command: run.py (the sweep, resumable), settings.py
(per-task settings), results.py (selection, GLUE score, results.md/json, submission.zip), page.py
(report.html). A recipe, on top of run.py's `train`."""
