"""What-if replays of finished sweeps: `python -m jepa_ray.replay --sweep RUN_ID --scheduler moasha`
answers "what would early stopping have saved on the sweep I ran?" from its own curves."""

from jepa_ray.replay.whatif import WhatIf, sweep_table, what_if

__all__ = ["WhatIf", "sweep_table", "what_if"]
