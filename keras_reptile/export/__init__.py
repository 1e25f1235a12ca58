"""SavedModel signature contract and writer."""
