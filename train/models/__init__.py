"""The three model families. Each module holds one model, its config and its math."""
