"""Checks of a run config against its data and files, made before a launcher starts anything.

:class:`~common.federation.config.FederatedConfig` checks every key on its own; what
needs the data set (its users, its catalogue) or a file is checked here, so that the
launchers (:mod:`simulations.launch`, :mod:`deploy.run`) refuse a bad config in one line
before a SuperLink, Ray or a run folder exist. The ServerApp and the clients apply the
same rules again (they call the same functions).
"""

from __future__ import annotations

from pathlib import Path

from common.data.attributes import load_item_attributes
from common.data.partitioning import load_split
from common.federation.checkpoints import (
    Checkpoint,
    ItemId,
    check_compatible,
    dataset_item_ids,
    load_checkpoint,
    load_initial_checkpoint,
)
from common.federation.config import FederatedConfig
from common.federation.node_partition import data_source
from common.federation.run_model import run_model
from common.privacy.budget_split import user_level_noise
from common.privacy.calibration import check_reachable, resolve_delta


def check_population(config: FederatedConfig, n_users: int) -> None:
    """A simulation's ``population`` is 0 (the data set's users) or exactly that count."""
    if config.population not in (0, n_users):
        raise ValueError(
            f"population {config.population} differs from the {n_users} users of "
            f"{config.dataset} (leave it 0 in simulations)"
        )


def check_privacy_plan(config: FederatedConfig, n_users: int) -> None:
    """delta fits the users protected; the run's noise can be derived from its target.

    The same calls the server makes (:mod:`server.user_level_privacy`): delta at most
    1 / (10 n), and a target epsilon the accountant can meet over every planned round.
    With ``dp = "local"`` each node calibrates on its own data (sampling rate, steps), but
    a target below the accountant's floor at this delta fails on every node alike.
    """
    if config.dp == "none":
        return
    delta = resolve_delta(config.delta, n_users)
    if config.dp == "user":
        user_level_noise(config, delta)
    elif config.target_epsilon > 0 and not config.noise_multiplier > 0:
        check_reachable(config.target_epsilon, delta)


def check_simulation_inputs(config: FederatedConfig) -> int:
    """Read the data set, item attributes and initial checkpoint; returns the users."""
    n_users = load_split(*data_source(config)).n_users
    check_population(config, n_users)
    check_privacy_plan(config, n_users)
    if config.item_attributes or config.initial_checkpoint:
        item_ids = dataset_item_ids(*data_source(config))
        load_item_attributes(config.item_attributes, item_ids, config.dataset)
        if config.initial_checkpoint:
            checkpoint = load_initial_checkpoint(
                config.initial_checkpoint, config.model_config(), item_ids
            )
            check_attribute_map(config, checkpoint, item_ids)
    return n_users


def check_attribute_map(
    config: FederatedConfig, checkpoint: Checkpoint, item_ids: list[ItemId]
) -> None:
    """An attribute-composed model continues only on the item -> attribute map it learnt."""
    if config.item_embedding == "free":
        return
    try:
        run_model(config, len(item_ids), item_ids).load_state_dict(checkpoint.state_dict)
    except ValueError as error:
        raise ValueError(f"initial-checkpoint {config.initial_checkpoint}: {error}") from None


def check_deployment_inputs(config: FederatedConfig) -> None:
    """What a deployment's submitter can check: privacy plan, paths, the checkpoint's model.

    The catalogue and the users' data live on the SuperLink's and the nodes' machines;
    the checkpoint must be readable here (the launcher resolved it) and fit the model.
    """
    check_privacy_plan(config, config.population)
    if not Path(config.catalogue).is_absolute():
        raise ValueError(
            f"catalogue must be an absolute path on the SuperLink's machine, got "
            f"{config.catalogue!r}"
        )
    if config.initial_checkpoint:
        checkpoint = load_checkpoint(Path(config.initial_checkpoint))
        source = f"initial-checkpoint {config.initial_checkpoint}"
        check_compatible(checkpoint, config.model_config(), checkpoint.item_ids, source)
