"""Network zoo: every family registers itself in ``registry``; the registry discovers the modules.

Use ``create_network(name, topology, in_channels, n_classes, **options)``; ``list_networks()``
enumerates the families. Adding a family is adding a module here (docs/adding-a-network.md).
"""

from autoseg.networks.registry import (  # noqa: F401
    Adversary,
    NetworkSpec,
    TopologyConstraints,
    create_network,
    default_network,
    get_network_spec,
    list_networks,
    register_network,
)
from autoseg.networks.topology import Topology  # noqa: F401
