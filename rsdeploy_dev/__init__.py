"""rsdeploy_dev: the dev tooling beside the product, for tests, benches and ``rsdeploy demo``.

Local stand-ins for what production has (machines, registries, the app itself), so that rsdeploy
can be run end to end on one machine with no network beyond the Debian mirror. Product code
(``rsdeploy``, ``roles``, ``deploys``) never imports this package; it imports the product.

- :mod:`rsdeploy_dev.engine`: this machine's Debian packages and a running Docker engine
  (``ensure_packages``, ``ensure_engine``); the only importer of the docker SDK, on first use.
- :mod:`rsdeploy_dev.refapp`: the reference app, a small stand-in for the Residency Scheduler
  in five releases: git tags, checkouts, docker build contexts.
- :mod:`rsdeploy_dev.images`: the offline container images (debootstrap base, infra images,
  app images per release): build, ``docker save`` bundles.
- :mod:`rsdeploy_dev.registry`: the machine's one image registry: images pushed once, pulled by
  every sandbox's hosts as ``rsdeploy-registry:5000``.
- :mod:`rsdeploy_dev.sandbox`: sandbox hosts (Debian 12 systemd containers over SSH) on a
  network of their own, the registry joined to it, and a test ACME server.
- :mod:`rsdeploy_dev.distribution` and :mod:`rsdeploy_dev.walkthrough`: rsdeploy as a user
  installs it (the wheel in a clean virtualenv) and the README's walkthrough as they follow it.
- :mod:`rsdeploy_dev.load`: a steady, bounded load through a sandbox site's nginx while a
  release runs, and what its users saw (failures, longest failure run, latency).
- :mod:`rsdeploy_dev.cli`: ``rsdeploy demo``, ``rsdeploy sandbox ...`` and ``rsdeploy images
  ...``, registered through the entry-point group ``rsdeploy.commands``.

Imports run one way: cli -> sandbox -> registry -> images -> refapp, load -> sandbox, and each
of sandbox, registry and images -> engine (engine and refapp import nothing from this package).

It is a distribution of its own, ``rsdeploy-dev`` (rsdeploy_dev/pyproject.toml), installed by
this repository's development set-up (``.ci/setup``) and never by ``pip install rsdeploy``: it
works on this checkout (the reference app, the sandbox's state, the offline images' files).
"""

from pathlib import Path

#: The rsdeploy checkout the dev tooling works in.
REPO_ROOT = Path(__file__).resolve().parent.parent
