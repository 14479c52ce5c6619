"""recloop: a configurable recommender framework run as a pipeline of containerizable steps."""

__version__ = "0.1.0"
