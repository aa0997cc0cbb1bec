#!/usr/bin/env bash
# Run a command with RABBITMQ_URL pointing at a RabbitMQ that answers: $RABBITMQ_URL
# if it answers, else 127.0.0.1:5672, else a private node started here on free ports
# (installing Debian's rabbitmq-server when it is missing) and stopped afterwards.
#
# "Answers" means a real AMQP 0-9-1 handshake (the broker replies with a method
# frame), not just a TCP connect: a half-booted node, or another service on 5672,
# accepts connections long before it can serve a test.
#
# The private node shares nothing with a system broker: its own node name, AMQP and
# Erlang distribution ports, config (Debian's /etc/rabbitmq/rabbitmq.conf pins the
# listener to 5672 and would collide), env file, data, logs, no plugins, and a HOME
# holding a copy of the caller's ~/.erlang.cookie (or a fresh one) so rabbitmqctl run
# with that HOME can reach it. It runs as the caller, via /usr/lib/rabbitmq/bin, not
# Debian's /usr/sbin wrappers, which `su` to the rabbitmq user and so ignore HOME.
# tests/services.py (PrivateRabbit) starts nodes the same way.
#
# Knobs:
#   PYTHON=...                    interpreter for the handshake check (python3)
#   KEFU_IGNORE_DEFAULT_RABBIT=1  skip the 127.0.0.1:5672 check, to exercise the
#                                 private-node path on a machine that has a broker
#   KEFU_RABBIT_BOOT_TIMEOUT=60   seconds to wait for the private node to answer
set -euo pipefail

PY=${PYTHON:-python3}

answers() {  # answers URL -> 0 when an AMQP broker completes the first handshake step
  "$PY" - "$1" <<'PY' >/dev/null 2>&1
import socket, sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
with socket.create_connection((u.hostname or "127.0.0.1", u.port or 5672), timeout=2) as s:
    s.settimeout(2)
    s.sendall(b"AMQP\x00\x00\x09\x01")
    sys.exit(0 if s.recv(1) == b"\x01" else 1)  # frame type 1: the Connection.Start method
PY
}

rmq() {  # rmq NAME -> a RabbitMQ CLI that runs as the caller (see the header)
  if [ -x "/usr/lib/rabbitmq/bin/$1" ]; then echo "/usr/lib/rabbitmq/bin/$1"; else command -v "$1"; fi
}

free_port() {
  "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

if [ -n "${RABBITMQ_URL:-}" ] && answers "$RABBITMQ_URL"; then
  echo "with-rabbitmq: using RABBITMQ_URL=$RABBITMQ_URL"
elif [ "${KEFU_IGNORE_DEFAULT_RABBIT:-0}" != 1 ] && answers amqp://127.0.0.1:5672/; then
  export RABBITMQ_URL=amqp://guest:guest@127.0.0.1:5672/
  echo "with-rabbitmq: using the RabbitMQ on 127.0.0.1:5672"
else
  if ! rmq rabbitmq-server >/dev/null; then
    echo "with-rabbitmq: installing Debian's rabbitmq-server"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
  fi
  server=$(rmq rabbitmq-server)
  ctl=$(rmq rabbitmqctl)
  started=$(date +%s.%N)
  port=$(free_port)
  dist_port=$(free_port)
  while [ "$dist_port" = "$port" ]; do dist_port=$(free_port); done
  node="kefuci-$("$PY" -c 'import secrets; print(secrets.token_hex(4))')@localhost"
  dir=$(mktemp -d "${TMPDIR:-/tmp}/kefu-rabbit.XXXXXX")
  mkdir -p "$dir/home"
  if [ -r "$HOME/.erlang.cookie" ]; then
    cp "$HOME/.erlang.cookie" "$dir/home/.erlang.cookie"
  else
    "$PY" -c 'import secrets; print(secrets.token_hex(20).upper(), end="")' >"$dir/home/.erlang.cookie"
  fi
  chmod 400 "$dir/home/.erlang.cookie"
  : >"$dir/enabled_plugins"
  : >"$dir/rabbitmq-env.conf"
  printf 'listeners.tcp.1 = 127.0.0.1:%s\n' "$port" >"$dir/rabbitmq.conf"
  node_env=(
    HOME="$dir/home"
    RABBITMQ_NODENAME="$node"
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    RABBITMQ_NODE_PORT="$port"
    RABBITMQ_DIST_PORT="$dist_port"
    RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
    RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
    RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf"
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
    RABBITMQ_MNESIA_BASE="$dir/mnesia"
    RABBITMQ_LOG_BASE="$dir/log"
    RABBITMQ_PID_FILE="$dir/rabbit.pid"
    ERL_EPMD_ADDRESS=127.0.0.1
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  )
  env "${node_env[@]}" "$server" >"$dir/server.out" 2>&1 &
  pid=$!

  stop_node() {
    echo "with-rabbitmq: stopping $node"
    env "${node_env[@]}" timeout 30 "$ctl" -n "$node" stop >/dev/null 2>&1 || true
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "with-rabbitmq: $node did not stop; killing it"
      [ -s "$dir/rabbit.pid" ] && kill -9 "$(cat "$dir/rabbit.pid")" 2>/dev/null
      kill -9 "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
    rm -rf "$dir"
  }
  trap 'stop_node || true' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  export RABBITMQ_URL="amqp://guest:guest@127.0.0.1:$port/"
  deadline=$(( $(date +%s) + ${KEFU_RABBIT_BOOT_TIMEOUT:-60} ))
  until answers "$RABBITMQ_URL"; do
    if ! kill -0 "$pid" 2>/dev/null || [ "$(date +%s)" -ge "$deadline" ]; then
      echo "with-rabbitmq: rabbitmq-server did not start"
      tail -n 40 "$dir/server.out" "$dir"/log/*.log 2>/dev/null || true
      exit 1
    fi
    sleep 0.2
  done
  echo "with-rabbitmq: started $node on port $port in $("$PY" -c "import time; print(f'{time.time() - $started:.1f}')") s"
fi
set +e
"$@"
status=$?
exit $status
