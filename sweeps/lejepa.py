"""Sweep the LeJEPA baseline (Gaussian target, SIGReg): `python sweeps/lejepa.py --help`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout or a Ray job's working_dir

from jepa_ray.sweep import LEJEPA, main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:], **LEJEPA))
