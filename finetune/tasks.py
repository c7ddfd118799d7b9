"""The task heads by name: a plain dict, no registries. Each module follows docs/internals.md."""
from finetune import classification, ner, qa

TASKS = {"cls": classification, "ner": ner, "qa": qa}

# Which task a checkpoint without mlm_task.json holds, read from its config.json `architectures`.
ARCHITECTURE_SUFFIXES = {"ForSequenceClassification": "cls", "ForTokenClassification": "ner", "ForQuestionAnswering": "qa"}
