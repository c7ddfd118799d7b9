"""Sequence classification (single-label, regression, multi-label): config -> data (columns, labels) ->
features -> task; inputs serve `mlm predict`. The task module (the hooks of finetune.task.Task) is
finetune.cls.task."""
