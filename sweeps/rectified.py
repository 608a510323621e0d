"""Sweep Rectified LpJEPA: `python sweeps/rectified.py --help`.

With no arguments: a local sweep on the embedded digits that finishes in minutes on a CPU,
then the Pareto front (linear_acc vs l0_density) and the `mlflow ui` command.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout or a Ray job's working_dir

from jepa_ray.sweep import RECTIFIED, main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:], **RECTIFIED))
