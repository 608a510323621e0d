"""`python -m jepa_ray.train`: one trial without a sweep (jepa_ray.train.cli)."""

from jepa_ray.train.cli import main

raise SystemExit(main())
