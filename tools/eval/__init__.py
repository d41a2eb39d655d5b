"""Leave-one-out evaluation of the generative model and its baselines."""
