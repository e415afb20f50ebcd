"""lmforge's library: stages that take typed config and paths and write outputs to paths."""
