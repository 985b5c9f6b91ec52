"""What a run leaves on disk, read and kept by every command: its folder (folders.py), the checkpoint format and
the model in a checkpoint (checkpoint.py), finding and pruning checkpoints (lookup.py), metrics.jsonl
(metrics_log.py) and the trackers that show it as it is written (trackers.py: TensorBoard, W&B, trackio).
Nothing here imports the training package: `ten generate` and the others load a model with it.

    runs/<name>/
        metrics.jsonl                       one JSON record a line: train, eval, start and end events
        checkpoints/step-0000500/ ...       checkpoints (see checkpoint.py), best/ and final/
        abandoned-after-step-N/             what a run resumed at an earlier step set aside
        trackers.json, tensorboard/, wandb/ with --report_to: the tracker runs' id, TensorBoard's events,
                                            W&B's offline runs
"""
