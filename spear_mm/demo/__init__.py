"""The embedded default: SmolLM2-135M-Instruct from a registry wheel, CPT on shipped finance prose, the run."""
