"""Generation backends: one protocol (base.py), an HF implementation and a vLLM implementation."""
