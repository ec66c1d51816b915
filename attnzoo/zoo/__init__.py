"""Model families built from attnzoo layers; importing this package registers every one of them.

Each non-underscore module here declares its architectures with ``@register_model`` (see ``_registry``), so
importing them is what makes ``attnzoo.create_model`` and ``timm.create_model`` know the names. Two modules hold
classes derived from an optional host library and are imported on first use instead: their entrypoints live in
``host_models``, which imports neither PyG nor smp, so ``import attnzoo`` stays as fast as timm's import allows.
"""

import importlib
import pkgutil

from attnzoo.zoo._registry import (
    TASKS,
    ModelEntry,
    build_classifier,
    classifier_cfg,
    create_model,
    from_pretrained,
    hub_default_cfgs,
    list_models,
    list_pretrained,
    model_entry,
    model_task,
    register_model,
    save_pretrained,
    split_name,
    tag_record,
)

# the registry's public face: building and listing models, and declaring a family the way the modules here do
__all__ = ["TASKS", "ModelEntry", "build_classifier", "classifier_cfg", "create_model", "from_pretrained",
           "hub_default_cfgs", "list_models", "list_pretrained", "model_entry", "model_task", "register_model",
           "save_pretrained", "split_name", "tag_record"]

# family modules that import PyTorch Geometric (tangnn) or segmentation-models-pytorch (smp_bridge) at their top;
# host_models registers their entrypoints and imports them when a model is built (or, for smp's encoder table,
# when smp is imported)
IMPORTED_ON_USE = frozenset({"smp_bridge", "tangnn"})

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name not in IMPORTED_ON_USE:
        importlib.import_module(f"{__name__}.{_module.name}")
