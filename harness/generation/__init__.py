"""Generation: the backend protocol (token ids in and out, Yes/No reads) and its two engines, transformers + peft
(`hf`, with prefix packing and KV reuse across chunks) and vLLM; prompts, step splitting, the engine a run holds."""
