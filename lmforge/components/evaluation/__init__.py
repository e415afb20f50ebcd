"""Evaluation: score a fine-tuned model without training, and the reports that explain the numbers.

- `evaluate.evaluate_model`: a fine-tuned folder scored on a split, with plots (confusion matrix,
  STS-B scatter, per-entity F1, SQuAD EM/F1);
- `heldout`: pretrained BERT's masked-word accuracy and GPT's bits per byte on held-out text;
- `why_bert.why_bert_report`: one word in sentences of different senses, its contextual
  embeddings compared (pretrained vs random weights vs the static input embedding);
- `pretrained_vs_scratch.pretrained_vs_scratch_report`: the finetune stage's reports paired by init.

Nothing is imported here: the report stage should not pay for evaluate's imports, nor the reverse.
"""
