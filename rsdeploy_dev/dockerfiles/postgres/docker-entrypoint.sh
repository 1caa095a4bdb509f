#!/bin/bash
# Entrypoint of rsdeploy/postgres:15, with the official postgres image's interface:
#   POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE  superuser password (required unless
#                                                POSTGRES_HOST_AUTH_METHOD=trust)
#   POSTGRES_USER(_FILE)  superuser name (default postgres)
#   POSTGRES_DB(_FILE)    database made at first start (default: the user's name)
#   POSTGRES_INITDB_ARGS  extra initdb arguments; PGDATA the data directory
# On the first start (no PG_VERSION in $PGDATA) it runs /docker-entrypoint-initdb.d/*.sh and
# *.sql (and *.sql.gz) in name order against a server listening on its socket only.
# Started as root it fixes the data directory's owner and drops to postgres (uid 999).
set -Eeuo pipefail

# file_env VAR [DEFAULT]: export VAR from $VAR, else from the file named by $VAR_FILE.
file_env() {
	local var="$1" file_var="${1}_FILE" value="${2:-}"
	if [ -n "${!var:-}" ] && [ -n "${!file_var:-}" ]; then
		echo >&2 "error: both $var and $file_var are set (but are exclusive)"
		exit 1
	fi
	if [ -n "${!var:-}" ]; then
		value="${!var}"
	elif [ -n "${!file_var:-}" ]; then
		value="$(<"${!file_var}")"
	fi
	export "$var"="$value"
	unset "$file_var"
}

# `docker run IMAGE -c shared_buffers=256MB` means `postgres -c shared_buffers=256MB`.
if [ "${1:0:1}" = '-' ]; then
	set -- postgres "$@"
fi

if [ "$1" = postgres ] && [ "$(id -u)" = 0 ]; then
	mkdir -p "$PGDATA" /var/run/postgresql
	find "$PGDATA" /var/run/postgresql \! -user postgres -exec chown postgres:postgres '{}' +
	chmod 700 "$PGDATA"
	chmod 2775 /var/run/postgresql
	exec setpriv --reuid=postgres --regid=postgres --init-groups "$BASH_SOURCE" "$@"
fi

init_files() {
	local psql=(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc
		--dbname "$POSTGRES_DB")
	local f
	for f in /docker-entrypoint-initdb.d/*; do
		case "$f" in
			*.sh)
				if [ -x "$f" ]; then
					echo "$0: running $f"
					"$f"
				else
					echo "$0: sourcing $f"
					. "$f"
				fi
				;;
			*.sql) echo "$0: running $f"; "${psql[@]}" -f "$f" ;;
			*.sql.gz) echo "$0: running $f"; gunzip -c "$f" | "${psql[@]}" ;;
			*) [ -e "$f" ] && echo "$0: ignoring $f" ;;
		esac
	done
}

first_start() {
	file_env POSTGRES_PASSWORD
	file_env POSTGRES_USER postgres
	file_env POSTGRES_DB "$POSTGRES_USER"
	local auth="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
	if [ -z "$POSTGRES_PASSWORD" ] && [ "$auth" != trust ]; then
		echo >&2 "error: the database is uninitialized and no superuser password is set:"
		echo >&2 "  set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE"
		exit 1
	fi
	# shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of words, as upstream
	initdb --username="$POSTGRES_USER" --encoding=UTF8 --locale=C.UTF-8 \
		--pwfile=<(printf '%s' "$POSTGRES_PASSWORD") ${POSTGRES_INITDB_ARGS:-}
	# Local socket: trust (health checks, init scripts); network: password, as upstream.
	printf "\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"
	printf "\nhost all all all %s\n" "$auth" >>"$PGDATA/pg_hba.conf"

	pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p ${PGPORT:-5432}" -w start
	if [ "$POSTGRES_DB" != postgres ]; then
		psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc \
			--dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
	fi
	init_files
	pg_ctl -D "$PGDATA" -m fast -w stop
	echo "$0: PostgreSQL init process complete; ready for start up."
}

if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
	first_start
fi
unset POSTGRES_PASSWORD
exec "$@"
