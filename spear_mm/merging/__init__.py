"""Step 4, merge: merge methods, the streaming per-tensor loop, buffers and the model card."""
