"""Pretraining: BERT (masked LM + NSP/SOP) and GPT (causal LM) with PyTorch Lightning."""
