"""`tensorgrid-coordinator`: the coordinator daemon's entry point."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

import grpc
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from coordinator.config import CoordinatorConfig
from coordinator.db import engine as db
from coordinator.db import migrate
from coordinator.settings import CONFIG, DATABASE, ENV_PREFIX, SETTINGS, config_from
from tensorgrid import config, config_show, exitcodes, owner, tls
from tensorgrid.errors import TensorGridError
from tensorgrid.logs import dump_stacks_on_signal, setup_logging

log = logging.getLogger("tensorgrid.coordinator")
PROGRAM = "tensorgrid-coordinator"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Run the TensorGrid coordinator: it shards jobs, leases tasks to nodes over gRPC, "
        "checks their signed results and assembles the output. Every setting is a flag, an environment "
        "variable and a key of the --config TOML file: a flag beats its variable, which beats the file.",
    )
    config.add_version(p)
    sub = p.add_subparsers(dest="command", required=True)
    config.add_settings(sub.add_parser("run", help="serve until SIGTERM/Ctrl-C"), CONFIG, *SETTINGS)
    CONFIG.add_to(config_show.add_show_parser(sub, SETTINGS, PROGRAM))
    db_group = sub.add_parser("db", help="the database's schema version")
    db_commands = db_group.add_subparsers(dest="db_command", required=True)
    upgrade = db_commands.add_parser("upgrade", help="create, stamp or upgrade the schema to this version's")
    current = db_commands.add_parser("current", help="print the schema's revision and whether it is this version's")
    for parser in (upgrade, current):
        config.add_settings(parser, CONFIG, *DATABASE)
    return p


def parse_args(argv: list[str] | None, env: config.Env | None = None) -> argparse.Namespace:
    return config.parse_args(build_parser(), argv, SETTINGS, env, CONFIG)


def cmd_config(ns: argparse.Namespace) -> int:
    """`config show`: the settings a run with the same flags and environment would use."""
    notes = [f"${name} is set but is no setting (misspelt?): ignored" for name in unknown_variables()]
    print(config_show.show(ns, SETTINGS, PROGRAM, CONFIG, notes))
    config_from(ns)  # after printing: what is wrong is then seen next to what was read
    return exitcodes.OK


def cmd_db(ns: argparse.Namespace) -> int:
    """`db upgrade` / `db current` on the database the settings name (the file, the environment, the flags)."""
    url = CoordinatorConfig(data_dir=ns.data_dir, database_url=ns.database_url).db_url
    sqlite_file = make_url(url).database if url.startswith("sqlite") else None
    if ns.db_command == "current" and sqlite_file and not Path(sqlite_file).exists():
        print(f"no database: {sqlite_file} does not exist (the first start or `db upgrade` creates it)")
        return exitcodes.ERROR
    if sqlite_file:
        Path(sqlite_file).parent.mkdir(parents=True, exist_ok=True)  # where a start would make it
    engine = db.make_engine(url, prepare=False)
    try:
        if ns.db_command == "upgrade":
            before, after = db.upgrade(engine)
            print(f"was: {before.describe()}\nnow: {after.describe()}")
        else:
            with engine.connect() as conn:
                print(migrate.state(conn).describe())
    except OperationalError as e:
        raise TensorGridError(f"cannot reach the database {engine.url.render_as_string()}: {e.orig}") from None
    finally:
        engine.dispose()
    return exitcodes.OK


def credentials(settings: CoordinatorConfig) -> grpc.ServerCredentials | None:
    """TLS credentials, or None for plain text where the rule allows it (tensorgrid.tls); checked
    before the server stack loads, with the dashboard's port: a bad certificate stops us here."""
    if settings.dashboard_listen:  # plain HTTP off loopback without --insecure is refused too
        tls.check_listen(settings.dashboard_listen, settings.tls_cert, settings.tls_key, settings.insecure)
    if not tls.check_listen(settings.listen, settings.tls_cert, settings.tls_key, settings.insecure):
        return None
    assert settings.tls_cert is not None and settings.tls_key is not None
    return tls.server_credentials(settings.tls_cert, settings.tls_key)


def unknown_variables() -> list[str]:
    return config.unknown_variables(ENV_PREFIX, (*SETTINGS, CONFIG))


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    setup_logging(ns.verbose, "tensorgrid.coordinator", ns.log_format)
    dump_stacks_on_signal()  # kill -USR1: every thread's stack into the log (README, Logs)
    for name in unknown_variables():
        log.warning("$%s is set but is no setting of %s (misspelt?): ignored", name, PROGRAM)
    try:
        if ns.command == "config":
            return cmd_config(ns)
        if ns.command == "db":
            return cmd_db(ns)
        owner.watch(ns.owner)  # before anything slow: an owner gone meanwhile still ends us
        settings = config_from(ns)
        creds = credentials(settings)
        # the server stack (gRPC, the job kinds, torch) loads only to serve: `config` and `db` start in a
        # blink, and so does a refusal of the listen addresses or certificates
        from coordinator.daemon import serve
        from tensorgrid.sandbox import launch

        launch.configure(ns.sandbox_zygote)  # how the referee's child starts
        asyncio.run(serve(settings, creds, ns.ready_file))
    except TensorGridError as e:
        log.error("%s", e)
        return exitcodes.ERROR
    except OSError as e:
        log.error("cannot start: %s", e)
        return exitcodes.ERROR
    return exitcodes.OK


if __name__ == "__main__":
    sys.exit(main())
