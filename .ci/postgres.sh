# Sourced by .ci/run: a throwaway PostgreSQL cluster on 127.0.0.1 for the registry tests.
# Exports VSEAM_TEST_PG_URL; the trap set by the caller runs vseam_pg_stop at exit.
# Debian's `postgresql` package is installed when its binaries are missing.

vseam_pg_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  return 1
}

vseam_pg_start() {
  local sudo="" bin port user
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi
  if ! bin=$(vseam_pg_bin); then
    $sudo apt-get update && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y postgresql
    bin=$(vseam_pg_bin)
  fi
  VSEAM_PG_DIR=$(mktemp -d /tmp/vseam-pg.XXXXXX)
  # initdb refuses to run as root: the cluster belongs to the package's `postgres` user then.
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres: "$VSEAM_PG_DIR"
    VSEAM_PG_AS=(runuser -u postgres --)
    user=postgres
  else
    VSEAM_PG_AS=()
    user=$(id -un)
  fi
  # A free local port, picked by the kernel.
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "${VSEAM_PG_AS[@]}" "$bin/initdb" -D "$VSEAM_PG_DIR/data" -U "$user" -A trust --no-sync >"$VSEAM_PG_DIR/initdb.log" 2>&1 \
    || { cat "$VSEAM_PG_DIR/initdb.log"; return 1; }
  "${VSEAM_PG_AS[@]}" "$bin/pg_ctl" -D "$VSEAM_PG_DIR/data" -l "$VSEAM_PG_DIR/server.log" -w \
    -o "-h 127.0.0.1 -p $port -k $VSEAM_PG_DIR -F" start >/dev/null \
    || { cat "$VSEAM_PG_DIR/server.log"; return 1; }
  "${VSEAM_PG_AS[@]}" "$bin/createdb" -h 127.0.0.1 -p "$port" -U "$user" vseam_test
  VSEAM_PG_BIN=$bin
  export VSEAM_TEST_PG_URL="postgresql+psycopg://$user@127.0.0.1:$port/vseam_test"
  echo "PostgreSQL test cluster: $VSEAM_TEST_PG_URL"
}

vseam_pg_stop() {
  if [ -n "${VSEAM_PG_DIR:-}" ] && [ -d "$VSEAM_PG_DIR/data" ]; then
    "${VSEAM_PG_AS[@]}" "$VSEAM_PG_BIN/pg_ctl" -D "$VSEAM_PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$VSEAM_PG_DIR"
  fi
}
