#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers on 127.0.0.1:5432 with trust auth
# for the role root and a database named test, as the tests expect:
# use the running one, start an installed but stopped cluster, or install
# one from Debian's packages on a fresh machine. Prints the URL to use.
set -euo pipefail

url="postgres://root@127.0.0.1:5432/test?sslmode=disable"
ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
as_postgres() { runuser -u postgres -- "$@"; }

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
	echo "== installing postgresql (apt-get)" >&2
	apt-get update -qq >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
if ! ready; then
	echo "== starting postgresql" >&2
	for v in $(ls /etc/postgresql); do
		pg_ctlcluster --skip-systemctl-redirect "$v" main start >&2 || true
	done
fi
for _ in $(seq 1 60); do
	ready && break
	sleep 0.5
done
ready || { echo "postgresql does not answer on 127.0.0.1:5432" >&2; exit 1; }

# A fresh Debian cluster has neither the root role nor trust auth on
# loopback: add both (idempotent; a machine that already has them is left as it is).
if ! psql "$url" -qtAc 'select 1' >/dev/null 2>&1; then
	echo "== configuring postgresql for the tests (role root, database test, trust on loopback)" >&2
	as_postgres psql -qtAc "do \$\$ begin if not exists (select from pg_roles where rolname = 'root') then create role root superuser login; end if; end \$\$" >&2
	as_postgres psql -qtAc "select 1 from pg_database where datname = 'test'" | grep -q 1 || as_postgres createdb -O root test >&2
	hba="$(as_postgres psql -qtAc 'show hba_file')"
	if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
		sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
		as_postgres psql -qtAc 'select pg_reload_conf()' >/dev/null
	fi
	psql "$url" -qtAc 'select 1' >/dev/null
fi
echo "$url"
