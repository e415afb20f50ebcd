"""Data sources (Hub, local files, built-in demo), the readers they need, and the Hub's task schemas."""
