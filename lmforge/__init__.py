"""lmforge: pipeline-orchestrated MLOps for BERT and GPT.

- `lmforge.components`: the library, one module per job; every stage is a function of the params
  and paths (no Prefect imports);
- `lmforge.flows`: the Prefect flows and deployments that wire those stages.
"""

__version__ = "0.1.0"
