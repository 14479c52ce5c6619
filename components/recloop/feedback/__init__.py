"""The feedback loop's parts, called by the feedback step (`recloop.steps.feedback`).

    window   which serving logs are closed (attribution window), claimed once per run; reading them
    users    logged pseudonyms -> user ids of users the served model versions know
    join     feedback events attached to their slates; slates exploded into slots; labelled interactions
    abuse    the abuse rules that quarantine events
    sink     appending clean interactions where the next ingest reads them
    report   the counts, online CTR and the human summary

Same layer as serving, independent of serving and of the bandit policy (the import contracts in
pyproject.toml; docs/architecture.md lists what it may import).
"""
