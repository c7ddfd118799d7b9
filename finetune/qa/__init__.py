"""Extractive question answering: config -> data -> windows -> task -> postprocess. The task module (the hooks of finetune.task.Task) is
finetune.qa.task."""
