"""The dashboard's two languages: the same keys and fields in both, every key the pages use exists,
nothing left untranslated, and numbers and durations written the way each language writes them."""

from __future__ import annotations

import re
import string
from pathlib import Path

import pytest

from shelfwork.api.auth import ROLES, LoginRefused, LoginThrottled
from shelfwork.dashboard import i18n
from shelfwork.dashboard.i18n import EN, UK, Translator, login_error, span
from shelfwork.dashboard.routes import NOTICES
from shelfwork.store.models import JOB_STATES

PACKAGE = Path(i18n.__file__).parent
SAME_IN_BOTH = {"lang.en", "lang.uk", "charts.col.p95", "charts.bar_title", "charts.point_title"}


def fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_both_languages_have_the_same_keys() -> None:
    assert set(EN) == set(UK), {
        "only English": set(EN) - set(UK),
        "only Ukrainian": set(UK) - set(EN),
    }


def test_both_languages_fill_in_the_same_fields() -> None:
    differ = {
        key: (fields(EN[key]), fields(UK[key])) for key in EN if fields(EN[key]) != fields(UK[key])
    }
    assert not differ


def test_every_ukrainian_string_is_translated() -> None:
    assert all(EN[key].strip() and UK[key].strip() for key in EN)
    untranslated = [key for key in EN if EN[key] == UK[key] and key not in SAME_IN_BOTH]
    assert not untranslated


def test_every_key_the_pages_name_exists() -> None:
    prefixes = {key.split(".")[0] for key in EN}
    alternatives = "|".join(sorted(prefixes))
    key = re.compile(rf"""["']((?:{alternatives})\.[a-z_.]*[a-z_])["']""")
    sources = [*PACKAGE.glob("*.py"), *(PACKAGE / "templates").glob("*.html")]
    named = {
        found
        for path in sources
        for found in key.findall(path.read_text(encoding="utf-8"))
        if not found.endswith(".html")  # template names
    }
    assert len(named) > 150  # the scan finds the keys (it would pass vacuously otherwise)
    assert named - set(EN) == set()
    # Keys the pages build from data.
    built = (
        [f"state.{s}" for s in (*JOB_STATES, "pending", "skipped")]
        + [f"role.{r}" for r in ROLES]
        + [f"job.{a}" for a in ("cancel", "retry", "release")]
        + [f"notice.{n}" for n in NOTICES]
        + [f"lang.{code}" for code in i18n.LANGUAGES]
    )
    assert set(built) - set(EN) == set()


def test_a_missing_key_falls_back_to_english_then_to_the_key() -> None:
    uk = Translator("uk")
    assert uk("jobs.title") == "Завдання"
    assert Translator("fr").lang == "en"
    assert uk("no.such.key") == "no.such.key"


@pytest.mark.parametrize(
    ("message", "english", "ukrainian"),
    [
        (
            str(LoginRefused("wrong user name or password")),
            "Wrong user name or password.",
            "Неправильне",
        ),
        (
            str(LoginThrottled(41.2)),
            "Login refused: too many failed logins; try again in 42 s.",
            "через 42 с.",
        ),
        (
            "the login form expired; please try again",
            "The login form expired; please try again.",
            "застаріла",
        ),
        ("enter a user name and password", "Enter a user name and password.", "Введіть"),
        ("something new", "something new", "something new"),
    ],
)
def test_login_refusals_are_translated(message: str, english: str, ukrainian: str) -> None:
    assert login_error(Translator("en"), message) == english
    assert ukrainian in login_error(Translator("uk"), message)


@pytest.mark.parametrize(
    ("seconds", "english", "ukrainian"),
    [
        (None, "—", "—"),
        (0, "0.0 s", "0,0 с"),
        (4.26, "4.3 s", "4,3 с"),
        (42.4, "42 s", "42 с"),
        (65, "1 min 5 s", "1 хв 5 с"),
        (120, "2 min", "2 хв"),
        (3600, "1 h", "1 год"),
        (2 * 3600 + 10 * 60 + 5, "2 h 10 min", "2 год 10 хв"),
        (3 * 86400 + 4 * 3600, "3 d 4 h", "3 д 4 год"),
    ],
)
def test_durations_read_naturally(seconds: float | None, english: str, ukrainian: str) -> None:
    assert span(Translator("en"), seconds) == english
    assert span(Translator("uk"), seconds) == ukrainian
