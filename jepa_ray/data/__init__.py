"""Data: the dataset registry, the loaders, decoding, the in-memory splits, the batch index
streams and the batched on-device augmentation that makes the views."""

from jepa_ray.data.augment import Recipe, ViewMaker, measure_views_per_second, recipe_defaults
from jepa_ray.data.batches import BatchIterator, eval_batches
from jepa_ray.data.decode import decode_blob, decode_blobs, fit_square, stack_square
from jepa_ray.data.loaders import read_parquet_split
from jepa_ray.data.preflight import check_data
from jepa_ray.data.registry import DatasetInfo, dataset_info, dataset_names, register_dataset
from jepa_ray.data.splits import SPLIT_SEED, ImageSplits, channel_stats, load_dataset, split_holdout, stratified_indices

__all__ = [
    "BatchIterator",
    "DatasetInfo",
    "ImageSplits",
    "Recipe",
    "SPLIT_SEED",
    "ViewMaker",
    "channel_stats",
    "check_data",
    "dataset_info",
    "dataset_names",
    "decode_blob",
    "decode_blobs",
    "eval_batches",
    "fit_square",
    "load_dataset",
    "measure_views_per_second",
    "read_parquet_split",
    "recipe_defaults",
    "register_dataset",
    "split_holdout",
    "stack_square",
    "stratified_indices",
]
