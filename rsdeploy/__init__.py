"""rsdeploy: deployment automation for the Residency Scheduler, built on pyinfra 3."""

from importlib.metadata import PackageNotFoundError, version as _distribution_version
from pathlib import Path

#: Where the installed package lives: its templates, deploy files and verify suite are inside
#: it (in this repository, rsdeploy/templates, rsdeploy/deploys and rsdeploy/roles link to the
#: top-level folders), so an installed rsdeploy needs no checkout.
PACKAGE_DIR = Path(__file__).parent
TEMPLATES_DIR = PACKAGE_DIR / "templates"
DEPLOYS_DIR = PACKAGE_DIR / "deploys"
VERIFY_DIR = PACKAGE_DIR / "verify"

try:
    __version__ = _distribution_version("rsdeploy")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
