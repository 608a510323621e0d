import sys

from jepa_ray.curves.cli import main

sys.exit(main())
