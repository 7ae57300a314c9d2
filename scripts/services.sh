# Bringing up the services the tests need. Sourced by scripts/test and scripts/demo.
# PostgreSQL on 127.0.0.1:5432 (trust auth, users root and postgres, database test), Redis on
# 127.0.0.1:6379, a 3-node Redis Cluster on 127.0.0.1:7101-7103 for the cluster tests, NATS with
# JetStream on 127.0.0.1:4222 and RabbitMQ on 127.0.0.1:5672 (guest/guest) for the publishers.

die() {
  printf '\nerror: %s\n' "$1" >&2
  printf 'how to fix: %s\n' "$2" >&2
  exit 1
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi
}

apt_install() {
  command -v apt-get >/dev/null || return 1
  echo "installing $* with apt-get"
  as_root apt-get update -qq >/dev/null || true
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

# Debian's newest installed cluster version, if any.
pg_version() { ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1; }

# Trust auth on loopback, as the local development setup expects; true if it changed anything.
pg_trust_loopback() {
  local conf="/etc/postgresql/$1/main/pg_hba.conf"
  if [ -f "$conf" ] && ! as_root grep -q '^host all all 127.0.0.1/32 trust' "$conf"; then
    as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\nlocal all all trust' "$conf"
    return 0
  fi
  return 1
}

ensure_postgres() {
  if ! command -v pg_isready >/dev/null || ! command -v pg_ctlcluster >/dev/null; then
    apt_install postgresql postgresql-client || true
  fi
  local version
  version=$(pg_version)
  if ! pg_up && command -v pg_ctlcluster >/dev/null && [ -n "$version" ]; then
    pg_trust_loopback "$version" || true
    echo "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 30); do pg_up && break; sleep 1; done
  elif pg_up && [ -n "$version" ] && ! psql "$DATABASE_URL" -qtAX -c 'select 1' >/dev/null 2>&1 \
    && pg_trust_loopback "$version"; then
    # Running (a fresh install starts its cluster) but asking for passwords: reload with trust.
    echo "enabling trust auth on loopback for PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload || true
    sleep 1
  fi
  pg_up || die "PostgreSQL is not reachable on 127.0.0.1:5432" \
    "install and start it (apt-get install postgresql; pg_ctlcluster <version> main start), or set DATABASE_URL"
  # Roles and database the tests expect; harmless when they exist.
  local psql_root=(psql -h 127.0.0.1 -U postgres -d postgres -qtAX)
  if ! "${psql_root[@]}" -c 'select 1' >/dev/null 2>&1; then
    psql_root=(as_root runuser -u postgres -- psql -d postgres -qtAX)
  fi
  "${psql_root[@]}" -c "do \$\$ begin if not exists (select from pg_roles where rolname = 'root') then create role root superuser login; end if; end \$\$" >/dev/null 2>&1 || true
  if [ "$("${psql_root[@]}" -c "select 1 from pg_database where datname = 'test'" 2>/dev/null)" != 1 ]; then
    "${psql_root[@]}" -c 'create database test' >/dev/null 2>&1 || true
  fi
  psql "$DATABASE_URL" -qtAX -c 'select 1' >/dev/null 2>&1 || die \
    "cannot connect to $DATABASE_URL" \
    "check that the database and user exist and that loopback connections use trust auth"
  echo "PostgreSQL: ready at $DATABASE_URL"
}

redis_up() { redis-cli -h 127.0.0.1 -p "${1:-6379}" ping 2>/dev/null | grep -q PONG; }

ensure_redis() {
  command -v redis-server >/dev/null || apt_install redis-server || true
  if ! redis_up 6379 && command -v redis-server >/dev/null; then
    echo "starting Redis"
    mkdir -p /tmp/annals-redis
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /tmp/annals-redis --logfile /tmp/annals-redis/redis.log || true
    for _ in $(seq 1 20); do redis_up 6379 && break; sleep 0.5; done
  fi
  redis_up 6379 || die "Redis is not reachable on 127.0.0.1:6379" \
    "install and start it (apt-get install redis-server; redis-server --daemonize yes), or set REDIS_URL"
  echo "Redis: ready at $REDIS_URL"
}

# A throwaway 3-master Redis Cluster on loopback ports, for the hash-tag tests.
ensure_redis_cluster() {
  local ports=(7101 7102 7103)
  export REDIS_CLUSTER_URLS="${REDIS_CLUSTER_URLS:-redis://127.0.0.1:7101,redis://127.0.0.1:7102,redis://127.0.0.1:7103}"
  if redis-cli -p 7101 cluster info 2>/dev/null | grep -q 'cluster_state:ok'; then
    echo "Redis Cluster: ready at $REDIS_CLUSTER_URLS"
    return
  fi
  for port in "${ports[@]}"; do
    local dir="/tmp/annals-redis-cluster/$port"
    if ! redis_up "$port"; then
      rm -rf "$dir" && mkdir -p "$dir"
      redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --cluster-enabled yes \
        --cluster-config-file "$dir/nodes.conf" --cluster-node-timeout 2000 --save "" \
        --appendonly no --dir "$dir" --logfile "$dir/redis.log" || true
    fi
  done
  for port in "${ports[@]}"; do
    for _ in $(seq 1 20); do redis_up "$port" && break; sleep 0.5; done
  done
  if ! redis-cli -p 7101 cluster info 2>/dev/null | grep -q 'cluster_state:ok'; then
    yes yes | redis-cli --cluster create 127.0.0.1:7101 127.0.0.1:7102 127.0.0.1:7103 \
      --cluster-replicas 0 >/dev/null 2>&1 || true
    for _ in $(seq 1 30); do
      redis-cli -p 7101 cluster info 2>/dev/null | grep -q 'cluster_state:ok' && break
      sleep 0.5
    done
  fi
  redis-cli -p 7101 cluster info 2>/dev/null | grep -q 'cluster_state:ok' || die \
    "the Redis Cluster on 127.0.0.1:7101-7103 did not form" \
    "check /tmp/annals-redis-cluster/*/redis.log; kill stale redis-server processes on those ports"
  echo "Redis Cluster: ready at $REDIS_CLUSTER_URLS"
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# NATS with JetStream on 127.0.0.1:4222, for the publisher tests (annals-brokers).
ensure_nats() {
  export NATS_URL="${NATS_URL:-nats://127.0.0.1:4222}"
  [ -x /usr/sbin/nats-server ] || command -v nats-server >/dev/null || apt_install nats-server || true
  local bin
  bin=$(command -v nats-server || echo /usr/sbin/nats-server)
  if ! port_up 4222 && [ -x "$bin" ]; then
    echo "starting NATS (JetStream)"
    as_root mkdir -p /var/lib/nats-server
    as_root start-stop-daemon --start --oknodo --background --exec "$bin" -- \
      -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log || true
    for _ in $(seq 1 30); do port_up 4222 && break; sleep 0.5; done
  fi
  port_up 4222 || die "NATS is not reachable on 127.0.0.1:4222" \
    "install and start it (apt-get install nats-server; nats-server -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server), or set NATS_URL"
  echo "NATS: ready at $NATS_URL"
}

# RabbitMQ on 127.0.0.1:5672 (guest/guest), for the publisher tests (annals-brokers).
ensure_rabbitmq() {
  export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server || true
  if ! port_up 5672 && command -v rabbitmq-server >/dev/null; then
    echo "starting RabbitMQ"
    as_root rabbitmq-server -detached || true
    # The node takes several seconds to boot before it listens.
    for _ in $(seq 1 90); do port_up 5672 && break; sleep 1; done
  fi
  port_up 5672 || die "RabbitMQ is not reachable on 127.0.0.1:5672" \
    "install and start it (apt-get install rabbitmq-server; rabbitmq-server -detached), or set AMQP_URL"
  echo "RabbitMQ: ready at $AMQP_URL"
}
