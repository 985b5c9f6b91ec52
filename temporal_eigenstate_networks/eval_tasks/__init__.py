"""Local lm-evaluation-harness tasks (YAML + JSONL, no hub): pass this folder as lm-eval's include path.

Rebuild the JSONL files with `python -m temporal_eigenstate_networks.eval_tasks.build`; see hf/evaluate.py for
running them.
"""
