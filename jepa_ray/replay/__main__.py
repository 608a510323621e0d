import sys

from jepa_ray.replay.cli import main

sys.exit(main())
