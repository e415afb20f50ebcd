"""Fine-tuning: GLUE classification (BERT and GPT heads), metrics, checkpoints to start from."""
