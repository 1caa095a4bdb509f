"""The reference app's releases as git tags and build contexts (no Docker needed)."""

from __future__ import annotations

import ast
import json
import subprocess
from pathlib import Path

import pytest

from rsdeploy_dev import refapp


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return refapp.build_repo(tmp_path_factory.mktemp("refapp") / "repo")


def test_build_repo_has_one_annotated_tag_per_version(repo):
    assert git(repo, "tag", "--list").split() == sorted(refapp.VERSIONS)
    for tag in refapp.VERSIONS:
        assert git(repo, "cat-file", "-t", tag) == "tag", f"{tag} is not an annotated tag"
    assert int(git(repo, "rev-list", "--count", "main")) == len(refapp.VERSIONS)


@pytest.mark.parametrize("tag", refapp.VERSIONS)
def test_each_tag_reports_its_own_version(repo, tag):
    assert f'VERSION = "{tag}"' in git(repo, "show", f"{tag}:backend/app/version.py")
    assert json.loads(git(repo, "show", f"{tag}:frontend/version.json")) == {"version": tag}


def test_only_v1_1_0_and_later_carry_the_author_migration(repo):
    def migrations(tag):
        return git(repo, "ls-tree", "--name-only", f"{tag}:backend/alembic/versions").split()
    assert migrations("v1.0.0") == ["0001_initial.py"]
    assert migrations("v1.1.0") == ["0001_initial.py", "0002_note_author.py"]
    assert migrations("v1.2.0-broken") == migrations("v1.1.0")


def test_build_repo_is_idempotent(repo):
    before = {tag: git(repo, "rev-parse", tag) for tag in refapp.VERSIONS}
    marker = repo / ".git" / "kept"
    marker.write_text("")
    refapp.build_repo(repo)
    assert {tag: git(repo, "rev-parse", tag) for tag in refapp.VERSIONS} == before
    assert marker.exists(), "an up-to-date repository was rebuilt"


def test_clone_by_tag_gives_a_runnable_tree(repo, tmp_path):
    """What the systemd layout does: git clone --branch TAG, then run backend/entrypoint.sh."""
    subprocess.run(["git", "clone", "-q", "--branch", "v1.1.0", str(repo), str(tmp_path / "src")],
                   check=True, capture_output=True)
    entrypoint = tmp_path / "src" / "backend" / "entrypoint.sh"
    assert entrypoint.stat().st_mode & 0o111, "entrypoint.sh lost its executable bit"
    assert (tmp_path / "src" / "frontend" / "package-lock.json").is_file()


def _revisions(versions_dir: Path) -> dict[str, str | None]:
    """{revision: down_revision} of every migration file in ``versions_dir``."""
    chain = {}
    for path in versions_dir.glob("*.py"):
        values = {node.targets[0].id: ast.literal_eval(node.value)
                  for node in ast.parse(path.read_text()).body
                  if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
                  and node.targets[0].id in ("revision", "down_revision")}
        chain[values["revision"]] = values["down_revision"]
    return chain


@pytest.mark.parametrize("tag", refapp.VERSIONS)
def test_migrations_form_one_chain_so_upgrade_head_is_unambiguous(tag, tmp_path):
    chain = _revisions(refapp.checkout(tag, tmp_path) / "backend" / "alembic" / "versions")
    heads = set(chain) - set(chain.values())
    assert len(heads) == 1, f"{tag}: several alembic heads {heads}"
    assert list(chain.values()).count(None) == 1, f"{tag}: not exactly one base migration"


def test_checkout_refuses_an_unknown_tag(tmp_path):
    with pytest.raises(ValueError, match="unknown refapp version"):
        refapp.checkout("v9.9.9", tmp_path)


@pytest.mark.parametrize("part", refapp.PARTS)
def test_build_context_is_the_release_part_with_its_own_dockerfile(part, tmp_path):
    context = refapp.build_context("v1.0.0", part, tmp_path / "ctx")
    dockerfile = (context / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=rsdeploy/base:bookworm" in dockerfile
    # The CA bundle is a BuildKit secret, never a file in the context or a layer.
    assert "id=ca-certificates" in dockerfile and not (context / "ca-certificates.crt").exists()
    manifest = "requirements.txt" if part == "backend" else "package-lock.json"
    assert (context / manifest).is_file()
    leftovers = [p for p in context.rglob("*") if p.name in ("node_modules", ".next", "__pycache__")]
    assert not leftovers, f"local build output leaked into the context: {leftovers}"
