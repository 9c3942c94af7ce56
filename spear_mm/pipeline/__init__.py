"""`spear-mm run`: the whole loop as resumable steps (candidates, jobs, selection, summary)."""
