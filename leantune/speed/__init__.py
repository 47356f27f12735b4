"""The speed levers: each one exact (or named with its effect), switched on only where it is proven to
apply, and visible.

Every lever has one small interface (`levers.Lever`): `applies(model, args)` answers whether it applies to
this model and these arguments and why (a `Decision`), and `enter(model, args)` is a context that switches
it on and restores the model on leaving. The Trainer asks every lever once at the start of training, logs
one line of the answers, keeps them (`Trainer.speed`) and the CLI writes them into `leantune_config.json`.

  compact.py     train only the embedding rows the training set uses (CPU, weight decay 0)
  clsonly.py     the last layer computed for [CLS] alone, where probes prove the head reads only it
  fastpath.py    dropout from a fast counter-based stream, a GELU whose backward is one multiply (CPU)
  kernels.py     the small C kernels those use, compiled on first use, checked against numpy, cached
  cudagraph.py   training steps replayed from CUDA graphs (one GPU)
  mkl.py, malloc.py, process.py   the process-wide settings, made only by `tune_process()` when asked
  levers.py      the interface and the training levers behind it; decision.py: a Decision and its one-line form
"""
