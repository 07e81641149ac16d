"""Training loops for the model families lle can train."""
