"""The update rule: plain gradient steps, momentum, Muon, or both."""
