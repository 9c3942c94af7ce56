"""Step 3, rank and plan: the Plan type, restoration policies and plan exports."""
