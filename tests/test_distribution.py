"""The distribution a user installs: the wheel, the sdist and a pinned git URL of this commit,
each into a clean virtualenv outside the checkout, give the complete tool (every module,
template, deploy file and the verify suite) and nothing of the dev tooling; the installed
``rsdeploy`` scaffolds a site and checks it with the real validators. (Deploying and verifying
with the installed wheel against hosts: tests/e2e/test_walkthrough.py.)
"""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pytest

from rsdeploy_dev import REPO_ROOT
from rsdeploy_dev.distribution import VERSION, build_distributions, install, user_env

#: What the package must carry besides its modules: a sample of each kind.
CARRIED = ("rsdeploy/templates/nginx/site.conf.j2", "rsdeploy/templates/site/inventory.py.j2",
           "rsdeploy/templates/runner/Dockerfile", "rsdeploy/deploys/deploy.py",
           "rsdeploy/deploys/bootstrap.py", "rsdeploy/roles/redis.py",
           "rsdeploy/verify/conftest.py", "rsdeploy/verify/test_stack.py",
           "rsdeploy/verify/pytest.ini", "rsdeploy/stack/systemd/release.py")


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> tuple[Path, Path]:
    return build_distributions(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def wheel_bin(dist, tmp_path_factory) -> Path:
    return install(tmp_path_factory.mktemp("wheel") / "venv", str(dist[0]))


def package_files(bin_dir: Path) -> set[str]:
    """The files of the rsdeploy package a virtualenv holds (no bytecode caches)."""
    site = next((bin_dir.parent / "lib").glob("python3*/site-packages"))
    return {str(p.relative_to(site)) for p in (site / "rsdeploy").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def test_the_wheel_carries_the_whole_tool_under_one_package(dist):
    names = zipfile.ZipFile(dist[0]).namelist()
    assert all(name in names for name in CARRIED), [n for n in CARRIED if n not in names]
    tops = {name.split("/")[0] for name in names}
    assert tops == {"rsdeploy", f"rsdeploy-{VERSION}.dist-info"}, tops  # no `roles` of its own
    assert not [n for n in names if "rsdeploy_dev" in n or n.startswith("tests/")]
    entry_points = zipfile.ZipFile(dist[0]).read(
        f"rsdeploy-{VERSION}.dist-info/entry_points.txt").decode()
    assert "rsdeploy = rsdeploy.cli:main" in entry_points
    assert "rsdeploy.commands" not in entry_points  # the dev tooling registers its own


def test_the_installed_command_is_the_product_only(wheel_bin, tmp_path):
    env = user_env(wheel_bin)
    version = subprocess.run(["rsdeploy", "--version"], env=env, cwd=tmp_path,
                             capture_output=True, text=True)
    assert version.stdout.strip() == f"rsdeploy {VERSION}"
    helped = subprocess.run(["rsdeploy", "--help"], env=env, cwd=tmp_path, capture_output=True,
                            text=True).stdout
    assert "bootstrap" in helped and "init" in helped
    assert not {"demo", "sandbox", "images"} & set(helped.replace(",", " ").replace("{", " ")
                                                    .replace("}", " ").split())
    imports = subprocess.run(["python", "-c", "import roles"], env=env, cwd=tmp_path,
                             capture_output=True, text=True)
    assert imports.returncode == 1 and "No module named 'roles'" in imports.stderr
    assert subprocess.run(["pip", "check"], env=env, cwd=tmp_path).returncode == 0


def test_the_installed_rsdeploy_scaffolds_a_site_that_passes_check(wheel_bin, tmp_path):
    env = user_env(wheel_bin)
    made = subprocess.run(["rsdeploy", "init", "ops", "--layout", "docker", "--domain",
                           "staging.example.org", "--host", "10.0.0.5"], env=env, cwd=tmp_path,
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    checked = subprocess.run(["rsdeploy", "check"], env=env, cwd=tmp_path / "ops",
                             capture_output=True, text=True, timeout=600)
    assert checked.returncode == 0, (checked.stdout + checked.stderr)[-3000:]
    assert "FAIL" not in checked.stdout and checked.stdout.rstrip().endswith("all files pass")
    assert "[nginx -t" in checked.stdout and "[promtool check config]" in checked.stdout


def metadata(bin_dir: Path) -> list[str]:
    """The installed distribution's version and dependencies, as pip recorded them."""
    script = ("import importlib.metadata as m; d = m.distribution('rsdeploy'); "
              "print(d.version); print(*sorted(d.requires or []), sep='\\n')")
    return subprocess.run([str(bin_dir / "python"), "-c", script], capture_output=True,
                          text=True, check=True).stdout.splitlines()


def test_the_sdist_and_a_pinned_git_url_install_the_same_tool(dist, wheel_bin, tmp_path):
    """The same files and the same dependencies as the wheel (which proves the tool whole)."""
    commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
                            capture_output=True, text=True, check=True).stdout.strip()
    from_sdist = install(tmp_path / "sdist", str(dist[1]), dependencies=False)
    from_git = install(tmp_path / "git", f"git+file://{REPO_ROOT}@{commit}", dependencies=False)
    expected = package_files(wheel_bin)
    assert package_files(from_sdist) == expected
    for bin_dir in (from_sdist, from_git):
        assert metadata(bin_dir) == metadata(wheel_bin)
        assert metadata(bin_dir)[0] == VERSION
    # The git URL installs the commit; the wheel was built from the checkout's files.
    dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--",
                            "rsdeploy", "roles", "deploys", "templates", "pyproject.toml"],
                           capture_output=True, text=True, check=True).stdout
    if dirty:  # never in CI (a clean clone)
        pytest.skip(f"the checkout has changes not committed:\n{dirty}")
    assert package_files(from_git) == expected
