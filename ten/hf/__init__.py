"""Hugging Face integration: evaluation with lm-evaluation-harness (evaluate.py)."""
