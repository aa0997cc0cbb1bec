#!/usr/bin/env bash
# Run a command with REDIS_URL pointing at a Redis that answers: $REDIS_URL if
# it answers, else 127.0.0.1:6379, else a redis-server started here on a free
# port (installing Debian's redis-server when it is missing) and stopped after.
set -euo pipefail

ping() {  # ping URL -> 0 when a Redis answers PONG
  "${PYTHON:-python3}" - "$1" <<'PY' >/dev/null 2>&1
import socket, sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
s = socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=1)
s.sendall(b"PING\r\n")
sys.exit(0 if s.recv(16).startswith(b"+PONG") else 1)
PY
}

if [ -n "${REDIS_URL:-}" ] && ping "$REDIS_URL"; then
  echo "with-redis: using REDIS_URL=$REDIS_URL"
elif ping redis://127.0.0.1:6379; then
  export REDIS_URL=redis://127.0.0.1:6379/0
  echo "with-redis: using the Redis on 127.0.0.1:6379"
else
  if ! command -v redis-server >/dev/null; then
    echo "with-redis: installing Debian's redis-server"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  fi
  port=$("${PYTHON:-python3}" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  dir=$(mktemp -d)
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" --daemonize no \
    --logfile "$dir/redis.log" &
  pid=$!
  trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
  export REDIS_URL="redis://127.0.0.1:$port/0"
  for _ in $(seq 50); do ping "$REDIS_URL" && break; sleep 0.1; done
  ping "$REDIS_URL" || { echo "with-redis: redis-server did not start"; cat "$dir/redis.log"; exit 1; }
  echo "with-redis: started redis-server on port $port"
fi
set +e
"$@"
status=$?
exit $status
