"""Data: the dataset registry, the loaders, decoding, the in-memory splits, the batch index
streams and the batched on-device augmentation that makes the views.

The names load on first use (jepa_ray.lazy): the sweep driver's preflight (`check_data`, the
registry) does not pull in torch with the augmentation."""

from jepa_ray import lazy

__getattr__, __all__ = lazy.exports(
    __name__,
    {
        "jepa_ray.data.augment": ("Recipe", "ViewMaker", "measure_views_per_second", "recipe_defaults"),
        "jepa_ray.data.batches": ("BatchIterator", "eval_batches"),
        "jepa_ray.data.decode": ("decode_blob", "decode_blobs", "fit_square", "stack_square"),
        "jepa_ray.data.loaders": ("read_parquet_split",),
        "jepa_ray.data.preflight": ("check_data",),
        "jepa_ray.data.registry": ("DatasetInfo", "dataset_info", "dataset_names", "register_dataset"),
        "jepa_ray.data.splits": (
            "SPLIT_SEED",
            "ImageSplits",
            "channel_stats",
            "load_dataset",
            "split_holdout",
            "stratified_indices",
        ),
    },
)
