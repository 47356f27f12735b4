"""The training stage: the Trainer (train / evaluate / predict on Accelerate) and what it is made of.

    trainer.py      the training loop          evaluation.py   evaluate / predict, one gather
    optim.py        AdamW, schedule, clip      checkpoint.py   atomic checkpoints, exact resume
    control.py      signals, NaN guard, best model            distributed.py  who trains on what
    runlog.py       log.jsonl, metrics.json    trackers.py     TensorBoard / MLflow / W&B (Accelerate's)
    checkpointer.py the Trainer's checkpoints  stats.py        running statistics     model.py  loading

Imports go down only: data/, speed/, problem.py, metrics.py, config.py; never report/ nor the recipes
(run.py, seeds.py, glue/).
"""
