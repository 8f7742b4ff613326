"""The foundation model: one interface (texts -> label probabilities for a task) and
its backends (transformers on CPU, vLLM on GPU, any OpenAI-compatible endpoint),
each imported only when chosen."""
