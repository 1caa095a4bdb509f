"""One module per component. Each role module has, top to bottom:

* ``Settings``: its section of the stack settings, every field with a default and a one-line meaning;
* ``applies(hs)``: whether the component belongs on a host (its roles and switches);
* optionally ``ports(hs)``: the ports its services take on a host it applies to, by settings key
  (``{"redis.port": 6379}``); the stack refuses two services on one port of one host;
* optionally ``check(hs, rules)``: the secrets it needs and its cross-field rules (before any host);
* ``render(hs)``: the files it needs on that host (pure; no host contacted), each with the typed
  reactions its change asks for (:mod:`rsdeploy.layout`: reload, restart, recreate, ...);
* optionally ``validate(tree, hs)``: run the real validator on the rendered files;
* pyinfra ``@deploy`` functions for what a file cannot say (install a package, make a certificate).

A role reads the shared settings model only and never opens another role's files. It asks
``hs.layout`` where its files live, what its service is called and how a peer reaches it; it never
branches on the layout's name. Roles import only the core (``rsdeploy.*`` below the stack) and,
sparingly, another role's public helper; the stack (:mod:`rsdeploy.stack`) composes them, in
rollout order, and no role imports it.
"""
