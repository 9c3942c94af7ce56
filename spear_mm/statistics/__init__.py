"""Probe statistics for the data-aware merge methods (RegMean, Fisher): what each linear layer reads on general
and on domain text, collected once per pair and probe (collect.py), stored as safetensors and read lazily, one
tensor's statistics at a time, by the streaming merge (store.py)."""
