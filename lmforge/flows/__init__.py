"""Prefect flows: each task wraps a stage from `lmforge.components`; flows only wire stages."""
