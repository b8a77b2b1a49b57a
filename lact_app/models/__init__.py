"""Plain nn.Module models of the three tasks (usable without Lightning)."""
