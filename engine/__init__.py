"""Answer generation: local transformers models, remote OpenAI-compatible servers."""
