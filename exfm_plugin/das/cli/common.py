"""What the ``exfm das`` subcommands share: the default metastore URL and the security options.

Kept apart from :mod:`.main` (the parsers and the publish/run commands) so that :mod:`.status`
needs no import of :mod:`.main`, and :mod:`.main` imports :mod:`.status`: no import circle.
"""
from __future__ import annotations

import argparse
import os
from typing import Any

__all__ = ["add_key_option", "add_zk_auth_options", "default_metastore", "spd_keys", "zk_auth"]


def default_metastore(snapshots: str) -> str:
    """The embedded default store: a SQLite file inside the snapshot store."""
    return f"sqlite:///{os.path.join(os.path.abspath(snapshots), 'das.db').lstrip('/')}"


def add_key_option(p: argparse.ArgumentParser) -> None:
    """``--spd-key-file`` (publish signs, run verifies): the SPD's authenticity switch."""
    p.add_argument("--spd-key-file", action="append", default=[], metavar="KEYS",
                   help="file of SPD signing keys, one a line (at least 32 characters); repeat or put several "
                        "lines to rotate: the first key signs, every key is accepted; snapshots whose manifest "
                        "signature is missing or wrong are refused")


def add_zk_auth_options(p: argparse.ArgumentParser) -> None:
    """``--zk-auth-file`` / ``--zk-auth-env``: secrets come from a file or the environment, never argv."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--zk-auth-file", default=None, metavar="PATH",
                   help="file with the ZooKeeper identities ('rw = user:password', optional 'ro = user:password'); "
                        "DAS nodes get digest ACLs. Without it the namespace is open to any client")
    g.add_argument("--zk-auth-env", default=None, metavar="NAME",
                   help="name of an environment variable holding what --zk-auth-file would hold")


def zk_auth(args: argparse.Namespace) -> Any:
    """The ZooKeeper identities of ``--zk-auth-file`` / ``--zk-auth-env`` (None: no ACLs)."""
    from ..metastore.zk_auth import load_zk_auth

    return load_zk_auth(file=getattr(args, "zk_auth_file", None), env=getattr(args, "zk_auth_env", None))


def spd_keys(args: argparse.Namespace) -> Any:
    """The :class:`~exfm_plugin.das.spd.signing.SigningKeys` of ``--spd-key-file`` (None: unsigned)."""
    from ..spd.signing import SigningKeys

    return SigningKeys.from_files(args.spd_key_file) if args.spd_key_file else None
