"""Inferring a pipeline config from data, for `recloop init`.

`facts` summarises each column's values; `roles` fills config keys from names and values by tiers and
turns ties into questions; `interactions` and `tables` apply that to the events, the item catalog and the
user table; `recloop.data.profile` measures the events; `plan` picks the candidate models and settings
the profile implies; `settings` and `render` write the commented YAML; `starter.infer_starter` runs it all.
Nothing here reads files (`recloop.data.sample` does) or prints (the command does).
"""
