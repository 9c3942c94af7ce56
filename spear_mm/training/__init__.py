"""Step 1, adapt: continual pre-training on the Hugging Face Trainer, corpus packing and layer freezing."""
