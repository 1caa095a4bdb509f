#!/bin/sh
# Entrypoint of rsdeploy/registry, like registry:2's: a config file means `registry serve FILE`.
set -e
case "$1" in
	*.yaml | *.yml) set -- registry serve "$@" ;;
	serve | garbage-collect | help | -*) set -- registry "$@" ;;
esac
exec "$@"
