"""OAI-PMH network harvesting (the seed's LA Referencia platform): list `shelfwork.pipelines.oai`
under `[pipelines] modules` and configure `[systems.oai]` (see `config.py`).

Networks are harvested into snapshots (`harvest`), transformed and validated (`publish`),
indexed incrementally into the built-in search, Solr and shelfwork's own OAI-PMH provider
(`indexing`), and cleaned (`clean`); `actions` chains them per network, on its cron or by hand.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from ...errors import ConfigError, ShelfworkError
from . import actions, clean, harvest, indexing, publish
from .config import OaiConfig, oai_config
from .snapshots import Network, Networks

if TYPE_CHECKING:
    from ...engine import Engine

PIPELINES = [actions.run, harvest.pipeline, publish.pipeline, indexing.pipeline, clean.pipeline]


def config_for(engine: Engine) -> OaiConfig:
    return oai_config(engine.settings)


def schedule_name(acronym: str) -> str:
    return f"oai:{acronym}"


def schedule_network(engine: Engine, network: Network) -> None:
    """Keep the network's schedule (`oai:<acronym>`, pipeline oai-run) in step with its cron."""
    from ...schedules import ScheduleNotFound

    name = schedule_name(network.acronym)
    if network.cron:
        engine.schedules.add(
            name,
            "oai-run",
            network.cron,
            timezone=network.timezone,
            params={"network": network.acronym},
            context=network.context,
            when_busy="skip",
            source="network",
            replace=True,
        )
        return
    with contextlib.suppress(ScheduleNotFound):
        engine.schedules.delete(name)


def check_rule_files(engine: Engine, network: Network) -> None:
    """Load the network's rule and transformer sets now, so a broken file stops the start."""
    try:
        publish.rule_sets(network, oai_config(engine.settings))
    except ShelfworkError as exc:
        raise ConfigError(f"network {network.acronym}: {exc}") from None


def sync(engine: Engine) -> None:
    config = oai_config(engine.settings)
    networks = Networks(engine.store)
    for network_config in config.networks:
        network = Network(**network_config.model_dump(), origin="config")
        check_rule_files(engine, network)
    networks.sync_from_config(config.networks)
    for network in networks.list():
        schedule_network(engine, network)


STARTUP = [sync]
