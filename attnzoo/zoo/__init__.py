"""Model families built from attnzoo layers; importing this package registers every one of them.

Each non-underscore module here declares its architectures with ``@register_model`` (see ``_registry``), so
importing them all is what makes ``attnzoo.create_model`` and ``timm.create_model`` know the names.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
