"""report.md and a self-contained report.html for a run or evaluation folder, with figures."""
