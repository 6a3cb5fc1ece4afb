"""What the recipes share: data (online, local, embedded), model presets, metrics,
arguments and the run-statistics callback.

Not part of the optimizer library: ``from clion_hf import CLion`` never imports this
package (it needs transformers, datasets and evaluate).
"""
