"""Koha -> DSpace integrator (the seed's "KDV Integrator"): list `shelfwork.pipelines.koha_dspace`
under `[pipelines] modules` and configure `[systems.koha-dspace]` (see `config.py`)."""

from .pipeline import integrate
from .review import review_tracker

PIPELINES = [integrate]
TRACKERS = [review_tracker]
