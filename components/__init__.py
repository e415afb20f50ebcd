"""lmforge's library: stages that take typed config and paths and write outputs to paths."""

__version__ = "0.1.0"
