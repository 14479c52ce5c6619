"""Contextual-bandit reranking of the base model's candidates.

`features` turns a candidate pool (items, base scores, the user's activity) into feature vectors;
`bandit` holds the LinUCB policy with exact propensities (`Policy.rank`), saved as json + safetensors;
`training` reconstructs candidate pools from impression logs, fits a policy, evaluates it off-policy and
moves the policy alias `policies/{model}/production.json` when it beats the logging policy;
`refresh` is the feedback step's use of it (train on one run's logged slots, gate, publish).
"""
