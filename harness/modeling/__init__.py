"""Model loading: base models and tokenizers (real or tiny stand-ins of a family), LoRA adapters, the tiny warm-up,
and log-probabilities of completions."""
