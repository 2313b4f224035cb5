#!/usr/bin/env bash
# Start the local PostgreSQL, Redis and RabbitMQ servers the integration tests talk to, if they are down.
set -u
if ! pg_isready -h 127.0.0.1 -q 2>/dev/null; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start || true
fi
if ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
fi
if ! rabbitmqctl -q status >/dev/null 2>&1; then
  rabbitmq-server -detached || true
fi
for i in $(seq 1 30); do
  pg_isready -h 127.0.0.1 -q 2>/dev/null && redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && exit 0
  sleep 1
done
echo "services: PostgreSQL or Redis did not come up on 127.0.0.1" >&2
exit 1
