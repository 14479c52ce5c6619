"""Hyper-parameter search for one candidate: search spaces to Optuna trials, budget shares, the study runner.

The tune step (`recloop.steps.tune`) supplies the objective (fit on train, NDCG@10 on valid); this package
knows nothing of steps or stores, so it can run a study for any objective.
"""
