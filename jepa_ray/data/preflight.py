"""The data check a sweep runs before Ray starts: a dataset read from disk (an image folder, parquet
tables or shards) is indexed and the first readable image of each split decoded, so an empty or
malformed folder or table is one line (exit 2) in seconds instead of the same failure in every
trial."""

from __future__ import annotations

from typing import TYPE_CHECKING

from jepa_ray.data.registry import dataset_info
from jepa_ray.errors import ConfigError

if TYPE_CHECKING:
    from jepa_ray.config import TrialConfig


def check_data(cfg: TrialConfig) -> None:
    """ConfigError/UsageError naming the problem when cfg's dataset cannot feed a trial: no class
    folders, an empty class folder, a split missing, columns missing, no readable image, a batch
    larger than the training split. Datasets that are not read from disk pass."""
    d = cfg.data
    if not dataset_info(d.dataset).streamable:
        return
    from jepa_ray.data.stream import source_splits  # torch: only for a dataset read from disk

    splits = source_splits(d)
    for name, source in (("train", splits.train), ("test", splits.test)):
        if len(source) == 0:
            raise ConfigError(f"config field 'data_dir' = '{d.data_dir}': the {name} split has no images")
        source.read(0, 0)  # UsageError naming the file when the split's first images are unreadable
    if len(splits.train) < cfg.optim.batch_size:
        raise ConfigError(
            f"config field 'batch_size' = {cfg.optim.batch_size} is not allowed for data_dir '{d.data_dir}'; "
            f"allowed: at most its {len(splits.train)} training images"
        )
