"""`python -m jepa_ray.pareto`: export a sweep's Pareto front (jepa_ray.pareto.cli)."""

from jepa_ray.pareto.cli import main

raise SystemExit(main())
