"""Head-importance methods, registered by name: AttAttr and the baselines."""
