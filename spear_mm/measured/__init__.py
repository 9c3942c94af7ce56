"""The measured planner: each unit's restore effect measured on two probes (merged in memory, nothing on disk), then
per-unit t by a knapsack seeded with the ranking and refined with optuna under a budget of probe evaluations."""

from spear_mm.measured import search  # noqa: F401  (registers the built-in refinements: tiers, kinds, units)
