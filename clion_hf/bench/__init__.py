"""``clion-bench``: a fair, resumable comparison of AdamW, Lion and CLion on the recipes.

``specs`` parses optimizer specs and defines workloads and presets, ``runner`` runs the
matrix (one ``accelerate launch`` per run, atomic per-run results, resume), ``report``
turns the results into ``report.md``, ``results.csv`` and plots, ``cli`` is the command.
"""
