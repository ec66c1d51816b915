"""attnzoo: faithful, tested attention layers for timm, PyTorch Geometric and segmentation-models-pytorch.

    import attnzoo
    model = attnzoo.create_model('ela_resnet18', num_classes=10)
    attnzoo.list_models(task='graph')

Importing attnzoo registers every model (timm's classifiers in timm's registry too) without importing PyTorch
Geometric or segmentation-models-pytorch: those are imported when a model or layer that needs them is built.
"""

from importlib.metadata import version as _installed_version

__version__ = _installed_version("attnzoo")  # one source: pyproject.toml

from attnzoo.zoo import (  # noqa: E402  (registers every model, in attnzoo's and timm's registries)
    create_model,
    from_pretrained,
    list_models,
    list_pretrained,
    model_task,
    register_model,
    save_pretrained,
)

__all__ = ["__version__", "create_model", "from_pretrained", "list_models", "list_pretrained", "model_task",
           "register_model", "save_pretrained"]
