"""The verify suite: testinfra checks of deployed hosts, run by ``rsdeploy verify`` (it ships
inside the package, so an installed rsdeploy verifies without this repository)."""
