"""Named-entity recognition (token classification): config -> tags -> data -> windows -> task; text and
inputs serve `mlm predict`. The task module (the hooks of finetune.task.Task) is
finetune.ner.task."""
