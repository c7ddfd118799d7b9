"""Pure metric functions for the fine-tuning tasks: no torch, no model, no hub downloads.

`evaluate.load("accuracy" | "seqeval" | "squad")` needs the hub, so the three task families compute
their scores here instead:

* sequence classification (classification.py): `classification_metrics`, `regression_metrics`, `multilabel_metrics`
  (scikit-learn / scipy, imported lazily so that NER and QA do not pay for them);
* NER (conlleval.py): `entity_scores`, entity-level precision / recall / F1 with the chunk semantics of the CoNLL
  `conlleval` Perl script (2004-01-26 version), which is also seqeval's default (non-strict) mode;
  and `chunks`, the conlleval reading of a tag sequence (tag-scheme conversion: finetune/ner/tags.py);
* extractive QA (squad.py): `normalize_answer`, `exact_match`, `f1`, `squad_scores`, identical to the official
  SQuAD v1.1 and v2.0 evaluation scripts.

Every function returns plain Python floats / ints / dicts (JSON-able). Tests: tests/finetune/test_metrics.py.
"""
from finetune.metrics.classification import classification_metrics, multilabel_metrics, regression_metrics
from finetune.metrics.conlleval import chunks, entity_scores
from finetune.metrics.squad import exact_match, f1, normalize_answer, squad_scores

__all__ = ["chunks", "classification_metrics", "entity_scores", "exact_match", "f1", "multilabel_metrics",
           "normalize_answer", "regression_metrics", "squad_scores"]
