"""The authors' own reranker code, run on the tests' tiny models: the source of truth for the recipes."""
