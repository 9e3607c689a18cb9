"""One module per cloud: each renders a Scenario into its own wire format and serves it."""
