"""The online recommendation API: a FastAPI app serving the production model, hot-swapped when the alias
moves, logging impressions and feedback for the learning loop."""
