"""attnzoo: faithful, tested attention layers for timm, PyTorch Geometric and segmentation-models-pytorch.

    import attnzoo
    model = attnzoo.create_model('ela_resnet18', num_classes=10)
    attnzoo.list_models(task='graph')
"""

__version__ = "0.1.0"

import warnings

# PyTorch Geometric scripts a class at import, which recent torch releases report as a FutureWarning on every run of
# every program that imports attnzoo; it is PyG's to fix, so it is silenced for this import only.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    from attnzoo import zoo  # noqa: E402,F401  (registers every model, in attnzoo's and timm's registries)
from attnzoo.zoo._registry import (  # noqa: E402
    create_model,
    from_pretrained,
    list_models,
    list_pretrained,
    save_pretrained,
)

__all__ = ["__version__", "create_model", "from_pretrained", "list_models", "list_pretrained", "save_pretrained"]
