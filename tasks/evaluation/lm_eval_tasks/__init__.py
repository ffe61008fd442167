"""lm-eval task YAMLs of this repository (usable with ``lm_eval --include_path <this folder>``) and their scorers."""
