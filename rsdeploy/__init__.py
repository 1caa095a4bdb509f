"""rsdeploy: deployment automation for the Residency Scheduler, built on pyinfra 3."""

from pathlib import Path

#: The checkout this package runs from: templates/, roles/, deploys/ and inventories/ live here.
REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = REPO_ROOT / "templates"
DEPLOYS_DIR = REPO_ROOT / "deploys"
