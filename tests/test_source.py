"""Build delivery's source: release tags resolved where rsdeploy runs, from a path or a URL,
and a missing tag stops ``rsdeploy deploy`` before any host is contacted."""

from __future__ import annotations

import subprocess
import tarfile

import pytest

from rsdeploy import source
from rsdeploy.cli import main
from rsdeploy.errors import SettingsError
from rsdeploy_dev import refapp
from tests.conftest import EXAMPLE_SECRETS
from tests.test_settings import GOOD_STACK, write_inventory

BUILD_APP = {"delivery": "build", "source_repo": "app"}


@pytest.fixture(scope="module")
def app_repo(tmp_path_factory):
    return refapp.build_repo(tmp_path_factory.mktemp("source") / "app")


def host_settings(tmp_path, app_repo, version="v1.0.0", **app):
    """Settings of one build-delivery host whose inventory sits beside the app repository."""
    from rsdeploy.stack import load_inventory

    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "app").symlink_to(app_repo)
    stack = dict(GOOD_STACK, version=version, app={**BUILD_APP, **app})
    return load_inventory(str(write_inventory(tmp_path, stack)), EXAMPLE_SECRETS)["rs1"]


def git(repo, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(source, "CACHE_DIR", tmp_path / "cache")


def test_release_resolves_the_tag_to_its_commit(tmp_path, app_repo):
    hs = host_settings(tmp_path, app_repo)
    repo, commit = source.release(hs)
    assert commit == git(app_repo, "rev-parse", "v1.0.0^{commit}")
    assert repo.resolve() == app_repo.resolve()


def test_a_url_is_mirrored_and_refetched(tmp_path, app_repo):
    hs = host_settings(tmp_path, app_repo, source_repo=f"file://{app_repo}")
    repo, commit = source.release(hs)
    assert repo.is_relative_to(source.CACHE_DIR) and commit == git(app_repo, "rev-parse", "v1.0.0^{commit}")
    # A tag published after the first deploy is found: the mirror is fetched on each use.
    git(app_repo, "tag", "v1.0.1-test", "v1.0.0")
    try:
        assert source.commit(source.repository(hs), "v1.0.1-test") == commit
    finally:
        git(app_repo, "tag", "-d", "v1.0.1-test")


def test_a_missing_tag_or_repository_is_a_settings_error(tmp_path, app_repo):
    with pytest.raises(SettingsError, match=r"host rs1: app.source_repo: .* has no tag v9.9.9"):
        source.release(host_settings(tmp_path / "a", app_repo, version="v9.9.9"))
    with pytest.raises(SettingsError, match="app.source_repo: .*no-such-dir is not a directory"):
        source.release(host_settings(tmp_path / "b", app_repo, source_repo="no-such-dir"))


def test_a_branch_is_not_a_release(app_repo):
    with pytest.raises(source.SourceError, match="has no tag main"):
        source.commit(app_repo, "main")


def test_archive_holds_only_that_part_of_that_commit(app_repo):
    commit = source.commit(app_repo, "v1.1.0")
    tarball = source.archive(app_repo, commit, "backend")
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
    assert "backend/Dockerfile" in names and "backend/alembic/versions/0002_note_author.py" in names
    assert not [n for n in names if not n.startswith("backend")], names
    assert source.archive(app_repo, commit, "backend") == tarball  # reused, never rebuilt


def test_deploy_of_an_unknown_tag_exits_2_before_contacting_hosts(tmp_path, app_repo, capsys):
    (tmp_path / "app").symlink_to(app_repo)
    # Port 9 (discard) on loopback: were the deploy to reach pyinfra, it would fail differently.
    inventory = write_inventory(tmp_path, dict(GOOD_STACK, app=BUILD_APP),
                                host_data={"ssh_hostname": "127.0.0.1", "ssh_port": 9})
    code = main(["deploy", "-i", str(inventory), "--version", "v9.9.9",
                 "--secrets", EXAMPLE_SECRETS])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"rsdeploy: error: {inventory}: host rs1: app.source_repo: "), err
    assert err.endswith("has no tag v9.9.9"), err
