"""What the server knows: the public catalogue, the population, and, in simulations only,
every user's data.

A simulation's server is a measurement harness: it reads the whole data set to validate
and test every round on every user's held-out items (simulation-only diagnostics). A
deployment's server holds no user data: it reads only the public item list (run-config
``catalogue``) and the public number of users (``population``); evaluation there is
federated (the nodes return metric sums).
"""

from __future__ import annotations

from dataclasses import dataclass

from common.data.catalogue import ItemCatalogue
from common.data.partitioning import load_split
from common.data.sequences import LeaveOneOutSplit
from common.federation.checkpoints import ItemId, dataset_item_ids
from common.federation.config import FederatedConfig
from common.federation.node_partition import data_source
from common.federation.preflight import check_population


@dataclass(frozen=True)
class ServerView:
    """The item ids in model order, the users protected, and the users' data if simulated."""

    item_ids: list[ItemId]
    population: int
    split: LeaveOneOutSplit | None  # None in a deployment

    @property
    def n_items(self) -> int:
        """Items the model scores."""
        return len(self.item_ids)


def server_view(config: FederatedConfig) -> ServerView:
    """Read the public catalogue only (deployment) or the whole data set (simulation)."""
    if config.deployment_nodes:
        catalogue = ItemCatalogue.from_file(config.catalogue)
        return ServerView(list(catalogue.item_ids), config.population, None)
    split = load_split(*data_source(config))
    check_population(config, split.n_users)
    return ServerView(dataset_item_ids(*data_source(config)), split.n_users, split)
