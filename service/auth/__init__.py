"""Who is calling: users and their API keys (stream tokens and browser sessions come later)."""
