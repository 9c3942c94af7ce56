"""Reading and writing checkpoints: lazy tensor access, pair validation, the architecture map, atomic output folders."""
