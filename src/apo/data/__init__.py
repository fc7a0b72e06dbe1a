"""Game data: splits built from a task, tokenised batches, and the DataModule both players share."""
