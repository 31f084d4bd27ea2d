"""The `database_url` setting: where a service keeps its state.

`sqlite:` (the default) keeps each store in its own file under the root, as the settings
of the store name it; `postgresql://user:password@host:port/database` keeps every store of
every service in that one PostgreSQL database, each in tables of its own.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

SQLITE_URL = "sqlite:"
POSTGRES_SCHEMES = ("postgresql", "postgres")


def check_database_url(url: str) -> str:
    """`url` when it is `sqlite:` or a PostgreSQL URL psycopg can read; ValueError otherwise."""
    scheme = url.partition(":")[0].lower()
    if url == SQLITE_URL:
        return url
    if scheme not in POSTGRES_SCHEMES or not url[len(scheme) + 1 :].startswith("//"):
        # The value itself is not repeated: it may hold a password.
        raise ValueError("must be sqlite: or postgresql://user:password@host:port/database")
    import psycopg  # only in processes configured for PostgreSQL
    from psycopg.conninfo import conninfo_to_dict

    try:
        urlsplit(url).port  # noqa: B018  # reading it checks it is a number in range
    except ValueError as exc:
        raise ValueError(f"has a bad port ({exc})") from None
    try:
        conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        raise ValueError("is not a PostgreSQL URL psycopg can read") from None
    return url


def postgres_url(url: str) -> str | None:
    """The PostgreSQL URL to connect to; None for `sqlite:`."""
    return None if url == SQLITE_URL else url


def redact(url: str) -> str:
    """`url` without its password, fit for logs and replies."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
