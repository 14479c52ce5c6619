"""Recommendation models. Every model subclasses `recloop.models.base.Recommender` and is registered."""
