"""Network zoo: every family registers itself in ``registry`` on import.

Use ``create_network(name, topology, in_channels, n_classes, **options)``; ``list_networks()``
enumerates them.
"""

from autoseg.networks.registry import (  # noqa: F401
    NetworkSpec,
    TopologyConstraints,
    create_network,
    get_network_spec,
    list_networks,
    register_network,
)
from autoseg.networks.topology import Topology  # noqa: F401

# Family modules (each registers itself). Keep this list in sync with docs/networks.md.
from autoseg.networks import unet, vnet  # noqa: F401,E402
from autoseg.networks import conresnet, segresnet, vox2vox  # noqa: F401,E402
from autoseg.networks import fcdensenet, fcn, nnformer, segnet, swinunet  # noqa: F401,E402
