"""SQLite's durability: every connection commits with ``synchronous=FULL`` (the WAL synced at each
commit) unless ``[database] sqlite_synchronous = "normal"`` asks for less; read back from real
connections, two open at once, so every pooled one is seen to get it."""

from __future__ import annotations

import pytest

from emporion.app import build_app
from emporion.settings import ConfigError, EmbeddingSettings, EngineSettings, Settings, load_settings
from emporion.store.session import Database, open_database

NORMAL, FULL = 1, 2  # what PRAGMA synchronous answers


async def pragmas(db: Database) -> list[tuple[int, str]]:
    """(synchronous, journal_mode) as each of two connections open at the same time sees it."""
    async with db.engine.connect() as one, db.engine.connect() as two:
        return [
            (
                (await conn.exec_driver_sql("PRAGMA synchronous")).scalar_one(),
                (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar_one(),
            )
            for conn in (one, two)
        ]


async def test_sqlite_syncs_every_commit_by_default(tmp_path):
    settings = Settings(data_dir=tmp_path, engine=EngineSettings(enabled=False), embeddings=EmbeddingSettings(enabled=False))
    assert settings.database.sqlite_synchronous == "full"
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        assert await pragmas(app.state.deps.db) == [(FULL, "wal"), (FULL, "wal")]


async def test_sqlite_synchronous_normal_when_configured(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[database]\nsqlite_synchronous = "normal"\n')
    settings = load_settings(tmp_path, config)
    assert settings.database.sqlite_synchronous == "normal"
    db = await open_database(settings.database_url, settings.database.sqlite_synchronous)
    try:
        assert await pragmas(db) == [(NORMAL, "wal"), (NORMAL, "wal")]
    finally:
        await db.close()
    again = await open_database(settings.database_url)  # the same file, opened with the default
    try:
        assert await pragmas(again) == [(FULL, "wal"), (FULL, "wal")]  # a connection's setting, not the file's
    finally:
        await again.close()


def test_an_unknown_synchronous_mode_is_refused(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[database]\nsqlite_synchronous = "off"\n')
    with pytest.raises(ConfigError, match="database.sqlite_synchronous"):
        load_settings(tmp_path, config)
    with pytest.raises(ValueError, match="sqlite_synchronous"):
        Database(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", "off")  # type: ignore[arg-type]
