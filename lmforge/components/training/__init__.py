"""The one Lightning layer under every training stage (pretraining and fine-tuning): the module base
(module.py), the Trainer and what each run does around it (trainer.py), checkpoint IO
(checkpoints.py), and the rules for several processes (distributed.py)."""
