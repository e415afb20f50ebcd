"""The MLflow model registry: what a version holds (packaging), the promotion gate (gate), and the
`register` stage with a scorer for every kind of model (stage)."""
