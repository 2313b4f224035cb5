#!/usr/bin/env bash
# Regenerate the initial Alembic revision from the models (only while nothing has been released).
set -euo pipefail
cd "$(dirname "$0")/.."
db=$(mktemp -u /tmp/regen-XXXXXX.db)
versions=src/shelfwork/store/migrations/versions
rm -f $versions/0001_initial_schema.py
# later, hand-written revisions (0002_search...) build on 0001: kept aside while it is remade
aside=$(mktemp -d)
find $versions -maxdepth 1 -name '0*.py' -exec mv {} "$aside"/ \;
trap 'mv "$aside"/*.py $versions/ 2>/dev/null || true; rmdir "$aside"' EXIT
.venv/bin/python - "$db" <<'PY'
import sys
from alembic import command
from shelfwork.store.database import alembic_config
command.revision(alembic_config(f"sqlite:///{sys.argv[1]}"), message="initial schema", autogenerate=True, rev_id="0001")
PY
rm -f "$db"
.venv/bin/ruff check --fix -q src/shelfwork/store/migrations || true
.venv/bin/ruff format -q src/shelfwork/store/migrations
