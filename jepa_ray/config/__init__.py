"""The configuration of one trial: the schema (one dataclass tree, flat unique leaf names),
the presets, and resolution + validation against the registries. Importing it is cheap (no
torch); resolving imports the registries."""

from jepa_ray.config.presets import PRESETS, preset
from jepa_ray.config.resolve import build, resolve, validate
from jepa_ray.config.schema import (
                                    LEAVES,
                                    LOSS_CONVENTION,
                                    OPTIMIZERS,
                                    PRECISIONS,
                                    RECIPES,
                                    REGULARIZERS,
                                    SECTIONS,
                                    SIGMA_MODES,
                                    DataConfig,
                                    EvalConfig,
                                    LossConfig,
                                    ModelConfig,
                                    OptimConfig,
                                    SystemConfig,
                                    TargetConfig,
                                    TrialConfig,
                                    ViewConfig,
                                    apply_overrides,
                                    field_doc,
                                    flatten,
                                    float_list,
                                    from_dict,
                                    load_json,
                                    parse_set_args,
                                    proj_dims_list,
                                    save_json,
                                    to_dict,
)
from jepa_ray.errors import ConfigError

__all__ = ["ConfigError", "DataConfig", "EvalConfig", "LEAVES", "LOSS_CONVENTION", "LossConfig", "ModelConfig",
           "OPTIMIZERS", "OptimConfig", "PRECISIONS", "PRESETS", "RECIPES", "REGULARIZERS", "SECTIONS", "SIGMA_MODES",
           "SystemConfig", "TargetConfig", "TrialConfig", "ViewConfig", "apply_overrides", "build", "field_doc",
           "flatten", "float_list", "from_dict", "load_json", "parse_set_args", "preset", "proj_dims_list",
           "resolve", "save_json", "to_dict", "validate"]
