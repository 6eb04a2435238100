"""Network zoo: every family registers itself in ``registry``; the registry discovers the modules.

Use ``create_network(name, topology, in_channels, n_classes, **options)``; ``list_networks()``
enumerates the families. Adding a family is adding a module here (docs/adding-a-network.md).

The names below load on first use, so that ``topology`` (plain Python) can be imported without torch:
the plans file's checks (``planning/plans.py``) use it, and a torch-free deployment reads plans.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Adversary": "registry", "NetworkSpec": "registry", "TopologyConstraints": "registry",
    "create_network": "registry", "default_network": "registry", "get_network_spec": "registry",
    "list_networks": "registry", "register_network": "registry", "Topology": "topology",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
