"""Fine-tuning: GLUE classification (BERT and GPT heads), extractive QA, token tagging, their metrics."""
