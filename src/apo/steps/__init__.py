"""Step-by-step commands (`apo-generate`, `apo-score`, `apo-rejection-sample`, `apo-train-rm`):
one phase of the game each, on files, so a round can be run by hand or on other machines."""
