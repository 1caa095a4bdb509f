"""Releases: what a host records about the release it runs.

A release record is the host's own account of what was deployed on it. Today it is one file,
``<data_dir>/version``, holding the release tag of the last completed deploy: rs-status shows it,
rs-backup names each dump after it, and ``rsdeploy verify`` checks it. The Releases issue grows
the record: a history of the releases deployed (to roll back to) and a lock that keeps two
deploys of one host apart.
"""

from __future__ import annotations

from io import StringIO
from typing import TYPE_CHECKING

from pyinfra.operations import files

if TYPE_CHECKING:
    from rsdeploy.settings import HostSettings


def version_file(hs: HostSettings) -> str:
    """Where the deploy records the deployed version: ``<data_dir>/version``."""
    return f"{hs.stack.paths.data_dir}/version"


def record_version(hs: HostSettings) -> object:
    """Write the deployed version to :func:`version_file` (rs-status, rs-backup and verify read it).

    Example (last step of a deploy): ``release.record_version(hs)``
    """
    return files.put(name=f"Record the deployed version {hs.stack.version}",
                     src=StringIO(hs.stack.version + "\n"), dest=version_file(hs), mode="644")
