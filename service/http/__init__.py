"""The HTTP layer: controllers that translate requests into calls of the domain layer, and back."""
