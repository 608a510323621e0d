"""jepa_ray: Ray-distributed hyperparameter sweeps for Rectified LpJEPA, LpJEPA and LeJEPA."""

__version__ = "0.1.0"


def load_encoder(path, map_location="cpu"):
    """The encoder saved in a checkpoint directory; forward(images) gives (backbone features, z)."""
    from jepa_ray.train.checkpoint import load_encoder as _load  # the root stays bare: every import runs it

    return _load(path, map_location=map_location)


__all__ = ["load_encoder", "__version__"]
