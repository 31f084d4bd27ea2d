"""The tensor store: named intermediate tensors of the building-block operations."""
