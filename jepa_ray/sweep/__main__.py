"""`python -m jepa_ray.sweep`: the Rectified LpJEPA sweep (`--space lejepa --preset lejepa-digits
--experiment lejepa` for the Gaussian baseline)."""

import sys

from jepa_ray.sweep.cli import RECTIFIED, main

raise SystemExit(main(sys.argv[1:], **RECTIFIED))
