"""The embedded runs: the VADER movie demo and the production scenario, on the default model."""
