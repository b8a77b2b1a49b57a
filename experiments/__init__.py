"""The paper's key experiments at CPU scale: ``python -m experiments.<name> [--quick] [--out DIR]``.

Each writes ``results.json`` (``{"rows": [...], "setup": {...}}``) and ``plot.png`` into ``--out``
(default: its own folder, where the full run's results are committed). See README "Experiments".
"""
