"""One module per pipeline stage: each takes typed inputs and returns a typed result."""
