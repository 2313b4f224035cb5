"""A running pair of emulated peers (Koha and DSpace) with the accounts, collections and
integrator settings that fit them: what `shelfwork sandbox`, the demo, the tests and the
benchmarks start from.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import RunningServer, serve
from .dspace import DSpaceState
from .dspace import create_app as dspace_app
from .koha import KohaState, serve_koha

KOHA_USER = "integrator"
DSPACE_USER = "integrator@library.example"
DSPACE_ADMIN = "admin@library.example"


@dataclass
class Peers:
    """Emulated Koha and DSpace on loopback ports; passwords are made fresh for each start."""

    koha: KohaState
    dspace: DSpaceState
    koha_server: RunningServer
    dspace_server: RunningServer
    collection: str
    review_collection: str
    koha_password: str = field(repr=False)
    dspace_password: str = field(repr=False)
    admin_password: str = field(repr=False)

    @property
    def koha_url(self) -> str:
        return self.koha_server.url

    @property
    def dspace_url(self) -> str:
        """DSpace's REST root, as the connector wants it."""
        return f"{self.dspace_server.url}/server/api"

    def integrator_config(
        self,
        folder: Path,
        *,
        deposit: Literal["submission", "admin"] = "submission",
        review: bool = False,
        auth: Literal["basic", "oauth2"] = "basic",
        **extra: Any,
    ) -> dict[str, Any]:
        """A `[systems.koha-dspace]` table for these peers, with inbox/processed/error in `folder`.

        `review`: deposit into the collection with a review workflow. The admin path needs an
        administrator account, as real DSpace does."""
        koha: dict[str, Any] = {"url": self.koha_url, "opac_url": self.koha_url, "auth": auth}
        if auth == "basic":
            koha |= {"user": KOHA_USER, "password": self.koha_password}
        else:
            koha |= {
                "client_id": "shelfwork",
                "client_secret": self.koha_password,
                "staff_user": KOHA_USER,
                "staff_password": self.koha_password,
            }
        admin = deposit == "admin"
        return {
            "inbox": str(folder / "inbox"),
            "processed": str(folder / "processed"),
            "error": str(folder / "error"),
            "koha": koha,
            "dspace": {
                "url": self.dspace_url,
                "user": DSPACE_ADMIN if admin else DSPACE_USER,
                "password": self.admin_password if admin else self.dspace_password,
                "collection": self.review_collection if review else self.collection,
                "deposit": deposit,
            },
            **extra,
        }

    def stop(self) -> None:
        self.koha_server.stop()
        self.dspace_server.stop()


def start_peers(
    *, generation: Literal["22.11", "24.05"] = "24.05", koha_port: int = 0, dspace_port: int = 0
) -> Peers:
    """Start both emulators, each with an integration account and (DSpace) two collections:
    one that archives deposits at once and one with a review workflow."""
    koha_password = secrets.token_urlsafe(12)
    dspace_password = secrets.token_urlsafe(12)
    admin_password = secrets.token_urlsafe(12)
    koha = KohaState(generation=generation)
    koha.add_staff_user(KOHA_USER, koha_password)
    koha.add_oauth_client("shelfwork", koha_password, KOHA_USER)
    dspace = DSpaceState()
    dspace.add_user(DSPACE_USER, dspace_password)
    dspace.add_user(DSPACE_ADMIN, admin_password, admin=True)
    collection = dspace.add_collection("Scanned books")
    review_collection = dspace.add_collection("Theses (reviewed)", workflow=True)
    koha_server = serve_koha(koha, port=koha_port)
    try:
        dspace_server = serve(dspace_app(dspace), "dspace", port=dspace_port)
    except Exception:
        koha_server.stop()
        raise
    return Peers(
        koha=koha,
        dspace=dspace,
        koha_server=koha_server,
        dspace_server=dspace_server,
        collection=collection,
        review_collection=review_collection,
        koha_password=koha_password,
        dspace_password=dspace_password,
        admin_password=admin_password,
    )
