"""Local lm-evaluation-harness tasks (YAML + JSONL, no hub): pass this folder as lm-eval's include path.

Rebuild the JSONL files with `python -m ten.eval_tasks.build`; see ten.hf.evaluate for running them.
"""
