"""The checks of a database server's URI (postgresql://, mysql://, ...) given as MLflow's store or
Optuna's storage, before any work starts: the SQLAlchemy driver installed (else what to
install), the database answering, each program in a database of its own, and no password in a
URI that the sweep shows. One line naming the input and what is allowed (`UsageError`) for each.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from jepa_ray.errors import UsageError

DRIVER_PACKAGES = {
    "psycopg": "'psycopg[binary]'",
    "psycopg2": "psycopg2-binary",
    "pg8000": "pg8000",
    "mysqldb": "mysqlclient",
    "pymysql": "PyMySQL",
    "pyodbc": "pyodbc",
}
"""A SQLAlchemy driver -> the pip package that provides it. SQLAlchemy picks the driver of a bare
scheme (postgresql:// is psycopg, version 3, from SQLAlchemy 2.1; psycopg2 before), and a missing
one is a one-line error before any work, not a traceback from MLflow's server or Optuna."""
POSTGRES_EXTRA = "pip install -e '.[postgres]'"
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")
DATABASE_CONNECT_S = 5
"""Seconds a database server has to accept a connection when a URI is checked."""
MLFLOW_TABLES = ("experiments", "runs")
OPTUNA_TABLES = ("studies", "trials")
"""Tables that say whose a database is: MLflow and Optuna both keep their schema version in an
`alembic_version` table, so one database cannot hold both."""


def redact(uri: str) -> str:
    """The URI with its password (if any) replaced by ***, for logs and messages."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def is_database_uri(uri: str) -> bool:
    """True for the URL of a database server (postgresql://, mysql://, mssql://, with or without
    a +driver), as opposed to a sqlite file or an HTTP tracking server."""
    return urlsplit(uri).scheme.split("+", 1)[0] in DATABASE_SCHEMES


def check_no_password(uri: str, what: str) -> None:
    """Refuse a password inside a URI given to the sweep: `ps` shows its command line, and the
    sweep prints its URIs and records the Optuna storage in MLflow (`jepa_ray.optuna_storage`)."""
    if urlsplit(uri).password is not None:
        raise UsageError(
            f"{what} {redact(uri)}: do not put a password in the URI (the command line and the "
            "sweep's records show it); allowed: the URI without it, the password in the environment "
            "(PGPASSWORD or ~/.pgpass for PostgreSQL, MLFLOW_TRACKING_PASSWORD for an HTTP server)"
        )


def check_database_driver(uri: str, what: str) -> None:
    """Refuse a database URI that SQLAlchemy cannot open (an unknown dialect or driver, or its
    driver not installed), saying what to install."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        dialect = make_url(uri).get_dialect()
    except (ArgumentError, NoSuchModuleError):
        raise UsageError(
            f"{what} {redact(uri)}: unknown database scheme '{urlsplit(uri).scheme}'; allowed: a SQLAlchemy URL "
            "such as postgresql://USER@HOST:PORT/DATABASE, postgresql+psycopg2://..., mysql+pymysql://..."
        ) from None
    try:
        dialect.import_dbapi()
    except ImportError:
        package = DRIVER_PACKAGES.get(dialect.driver, dialect.driver)
        extra = f" (or {POSTGRES_EXTRA})" if dialect.driver == "psycopg" else ""
        raise UsageError(
            f"{what} {redact(uri)}: its database driver {dialect.driver} is not installed; pip install {package}{extra}"
        ) from None


def database_tables(uri: str, what: str) -> set[str]:
    """The tables of the database a URI names (this also checks that it accepts a connection
    within DATABASE_CONNECT_S seconds); UsageError naming `what` when it does not."""
    import sqlalchemy

    base = urlsplit(uri).scheme.split("+", 1)[0]
    connect_args = {"connect_timeout": DATABASE_CONNECT_S} if base in ("postgresql", "mysql") else {}
    engine = sqlalchemy.create_engine(uri, connect_args=connect_args, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:
            return set(sqlalchemy.inspect(connection).get_table_names())
    except sqlalchemy.exc.SQLAlchemyError as err:
        reason = " ".join(str(getattr(err, "orig", None) or err).split())[:300]  # the driver's lines, joined
        raise UsageError(
            f"{what} {redact(uri)}: the database does not answer ({reason}); start it, or check the host, "
            "port, database (it must exist: CREATE DATABASE) and user; a password comes from PGPASSWORD or "
            "~/.pgpass"
        ) from None
    finally:
        engine.dispose()


def check_database(uri: str, what: str, *, foreign: tuple[str, ...], owner: str) -> None:
    """A database server URI that the driver, the server and the database accept, and that does
    not hold another program's tables (`foreign`): MLflow and Optuna each need a database of their
    own (`owner` names the one that checks)."""
    check_database_driver(uri, what)
    tables = database_tables(uri, what)
    if set(foreign) <= tables:
        whose = "MLflow's" if foreign == MLFLOW_TABLES else "Optuna's"
        raise UsageError(
            f"{what} {redact(uri)}: this database holds {whose} tables; allowed: a database of {owner}'s own "
            "(CREATE DATABASE, e.g. mlflow and optuna on the same server)"
        )


def check_optuna_storage(url: str, what: str = "--optuna-storage") -> None:
    """Refuse an Optuna storage URL the sweep cannot open: not sqlite:/// or a database server, a
    password in it, a driver missing, a database that does not answer or holds MLflow's tables."""
    scheme = urlsplit(url).scheme
    if scheme != "sqlite" and not is_database_uri(url):
        raise UsageError(
            f"{what} {redact(url)}: unknown scheme '{scheme}'; allowed: sqlite:///PATH, "
            "postgresql://USER@HOST:PORT/DATABASE, mysql://USER@HOST:PORT/DATABASE"
        )
    check_no_password(url, what)
    if scheme == "sqlite":
        if not url.startswith("sqlite:///"):
            raise UsageError(f"{what} {url}: expected sqlite:///RELATIVE/PATH or sqlite:////ABS/PATH")
        return
    check_database(url, what, foreign=MLFLOW_TABLES, owner="Optuna")
