"""Step 2, score: per-tensor weight metrics, normalised into unit scores; jobs, the ScoreTable, plots, probes."""
