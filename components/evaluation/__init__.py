"""Evaluation: score a fine-tuned model without training, and the reports that explain the numbers.

- `evaluate.evaluate_model`: a fine-tuned folder scored on a split, with plots (confusion matrix,
  STS-B scatter, per-entity F1, SQuAD EM/F1);
- `why_bert.why_bert_report`: one word in sentences of different senses, its contextual
  embeddings compared (pretrained vs random weights vs the static input embedding);
- `comparison.pretrained_vs_scratch_report`: the finetune stage's reports paired by init.
"""

from components.evaluation.comparison import pretrained_vs_scratch_report
from components.evaluation.evaluate import evaluate_model
from components.evaluation.why_bert import why_bert_report

__all__ = ["evaluate_model", "pretrained_vs_scratch_report", "why_bert_report"]
