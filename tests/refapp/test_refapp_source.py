"""The reference app's releases as git tags and build contexts (no Docker needed)."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
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
    # Linear history: main's commits, oldest first, are the tags' commits in VERSIONS order.
    commits = [git(repo, "rev-parse", f"{tag}^{{commit}}") for tag in refapp.VERSIONS]
    assert git(repo, "rev-list", "--reverse", "main").split() == commits


def test_every_parent_is_an_earlier_release():
    """The linear history adds releases in VERSIONS order: a parent must already be there."""
    assert list(refapp.PARENTS) == refapp.VERSIONS
    for tag, parent in refapp.PARENTS.items():
        if parent is not None:
            assert refapp.VERSIONS.index(parent) < refapp.VERSIONS.index(tag), tag
    assert refapp.lineage("v1.3.0-badmigration") == ["v1.0.0", "v1.1.0", "v1.3.0-badmigration"]


def _blobs(tree: Path) -> dict[str, str]:
    """{relative path: git blob id} of every file under ``tree`` (what ``git ls-tree`` lists)."""
    paths = sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file())
    ids = subprocess.run(["git", "hash-object", "--stdin-paths"], input="\n".join(paths),
                         cwd=tree, check=True, capture_output=True, text=True).stdout.split()
    return dict(zip(paths, ids))


@pytest.mark.parametrize("tag", refapp.VERSIONS)
def test_each_tag_holds_exactly_its_release(repo, tag, tmp_path):
    """No file of the commit before leaks in (v1.2.0-broken's /health into v1.3.0-badmigration)."""
    tree = refapp.checkout(tag, tmp_path)
    listed = git(repo, "ls-tree", "-r", tag, "backend", "frontend").splitlines()
    assert {line.split("\t")[1]: line.split()[2] for line in listed} == _blobs(tree)


#: Releases that ship their parent's frontend unchanged: its version.json names the parent.
FRONTEND_OF = {"v1.3.0-badmigration": "v1.1.0", "v1.4.0-irreversible": "v1.1.0"}


@pytest.mark.parametrize("tag", refapp.VERSIONS)
def test_each_tag_reports_its_own_version(repo, tag):
    assert f'VERSION = "{tag}"' in git(repo, "show", f"{tag}:backend/app/version.py")
    frontend = FRONTEND_OF.get(tag, tag)
    assert json.loads(git(repo, "show", f"{tag}:frontend/version.json")) == {"version": frontend}


def test_v1_3_0_badmigration_is_v1_1_0_plus_a_migration(repo):
    """Built on v1.1.0 (a healthy /health), not on v1.2.0-broken; the same frontend tree, so
    its image build is a full cache hit."""
    changed = git(repo, "diff", "--name-only", "v1.1.0", "v1.3.0-badmigration").split()
    assert changed == ["backend/alembic/versions/0003_ward_seed.py", "backend/app/version.py"]
    assert (git(repo, "rev-parse", "v1.3.0-badmigration:frontend")
            == git(repo, "rev-parse", "v1.1.0:frontend"))


def test_only_v1_1_0_and_later_carry_the_author_migration(repo):
    def migrations(tag):
        return git(repo, "ls-tree", "--name-only", f"{tag}:backend/alembic/versions").split()
    assert migrations("v1.0.0") == ["0001_initial.py"]
    assert migrations("v1.1.0") == ["0001_initial.py", "0002_note_author.py"]
    assert migrations("v1.2.0-broken") == migrations("v1.1.0")
    assert migrations("v1.3.0-badmigration") == [*migrations("v1.1.0"), "0003_ward_seed.py"]


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


#: The schema revision each release's ``alembic upgrade head`` aims at.
HEADS = {"v1.0.0": "0001", "v1.1.0": "0002", "v1.2.0-broken": "0002", "v1.3.0-badmigration": "0003",
         "v1.4.0-irreversible": "0003"}


@pytest.mark.parametrize("tag", refapp.VERSIONS)
def test_migrations_form_one_chain_so_upgrade_head_is_unambiguous(tag, tmp_path):
    chain = _revisions(refapp.checkout(tag, tmp_path) / "backend" / "alembic" / "versions")
    heads = set(chain) - set(chain.values())
    assert len(heads) == 1, f"{tag}: several alembic heads {heads}"
    assert list(chain.values()).count(None) == 1, f"{tag}: not exactly one base migration"
    assert heads == {HEADS[tag]}, f"{tag}: head {heads}"


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


def _like_real(tag: str, tmp_path: Path):
    """``app.core.like_real`` of release ``tag`` (standard library only: imported here directly)."""
    path = refapp.checkout(tag, tmp_path) / "backend" / "app" / "core" / "like_real.py"
    spec = importlib.util.spec_from_file_location(f"refapp_like_real_{tag.replace('.', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_like_real_switches_are_off_unless_asked_for(tmp_path):
    like_real = _like_real("v1.0.0", tmp_path)
    off = like_real.from_environment({})
    assert (off.worker_memory_mb, off.beat_memory_mb, off.celery_memory_mb, off.startup_delay,
            off.metrics_need_enable, off.fail_migration) == (0, 0, 0, 0, False, False)
    assert (off.beat_delay, off.home_writes, off.metrics_crash) == (0, False, False)


def test_like_real_defaults_are_the_measured_figures(tmp_path):
    """APP_CONTRACT.md, "Measured on the real backend": 560-670 MB per uvicorn worker, beat at
    about 233 MiB, 65-70 s to a healthy /health, /metrics only with ENABLE_METRICS=true, beat's
    schedule 27 s after its start, libraries writing under HOME at every start; the crash with
    metrics on only some versions have, so only when asked for."""
    like_real = _like_real("v1.0.0", tmp_path)
    real = like_real.from_environment({"REFAPP_LIKE_REAL": "1"})
    assert (real.worker_memory_mb, real.beat_memory_mb, real.celery_memory_mb) == (600, 230, 0)
    assert real.startup_delay == 65 and real.metrics_need_enable and not real.fail_migration
    assert real.beat_delay == 30 and real.home_writes and not real.metrics_crash
    tuned = like_real.from_environment({"REFAPP_LIKE_REAL": "1", "REFAPP_STARTUP_DELAY": "5",
                                        "REFAPP_METRICS_NEED_ENABLE": "0"})
    assert (tuned.startup_delay, tuned.metrics_need_enable, tuned.worker_memory_mb) == (5, False, 600)
    alone = like_real.from_environment({"REFAPP_FAIL_MIGRATION": "1"})
    assert alone.fail_migration and alone.worker_memory_mb == 0 and not alone.metrics_need_enable
    with pytest.raises(ValueError, match="REFAPP_WORKER_MEMORY_MB"):
        like_real.from_environment({"REFAPP_WORKER_MEMORY_MB": "600MB"})


@pytest.mark.parametrize("tag", refapp.VERSIONS)
def test_every_release_honours_the_like_real_switches(tag, tmp_path):
    """The hooks live in files no release overlay replaces; this keeps it so."""
    backend = refapp.checkout(tag, tmp_path) / "backend"
    hooks = {
        "app/main.py": ["like_real.hold_resident(switches.worker_memory_mb",
                        "like_real.slow_start(switches.startup_delay",
                        "like_real.write_home(", "like_real.fail_late_middleware(app, instrument)",
                        "only_when_enabled=switches.metrics_need_enable"],
        "app/core/metrics.py": ["should_respect_env_var=only_when_enabled"],
        "app/core/celery_app.py": ["signals.beat_init.connect", "signals.worker_init.connect",
                                   "SlowStartScheduler", "like_real.write_home("],
        "alembic/env.py": ["like_real.fail_migration(connection)"],
    }
    for path, needles in hooks.items():
        text = (backend / path).read_text()
        for needle in needles:
            assert needle in text, f"{tag}: {path} lost {needle!r}"
