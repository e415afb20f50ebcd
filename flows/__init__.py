"""Prefect flows: each task wraps a stage from `components`; flows only wire stages."""
