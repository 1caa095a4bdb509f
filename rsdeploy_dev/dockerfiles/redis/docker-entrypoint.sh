#!/bin/sh
# Entrypoint of rsdeploy/redis:7, like the official redis image's: arguments that are options or
# a .conf file go to redis-server; started as root it takes /data over and drops to redis.
set -e

if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
	set -- redis-server "$@"
fi

if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
	find . \! -user redis -exec chown redis:redis '{}' +
	exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi

# Redis writes dumps with the process umask: keep them private unless one was chosen.
if [ "$(umask)" = 0022 ]; then
	umask 0077
fi
exec "$@"
