#!/bin/sh
# Writes /run/redis/redis.conf: the static config plus this node's role. The master is
# whoever the sentinels say; with no sentinel answering (first start) it is redis-0.
set -eu
self="$(hostname).redis-headless"
cli="valkey-cli"
if [ -s /etc/redis/tls/ca.crt ]; then
  cli="$cli --tls --cacert /etc/redis/tls/ca.crt --cert /etc/redis/tls/tls.crt --key /etc/redis/tls/tls.key"
fi
master=""
for i in 0 1 2; do
  if answer=$(REDISCLI_AUTH="${SENTINEL_PASSWORD:-}" $cli -h "redis-sentinel-$i.redis-sentinel-headless" \
      -p 26379 sentinel get-master-addr-by-name tokenservice 2>/dev/null | head -n 1); then
    if [ -n "$answer" ]; then master="$answer"; break; fi
  fi
done
[ -n "$master" ] || master="redis-0.redis-headless"
{
  echo "include /etc/redis/conf/redis.conf"
  echo "replica-announce-ip $self"
  echo "masterauth \"$REPLICATION_PASSWORD\""
  if [ "$master" != "$self" ]; then echo "replicaof $master 6379"; fi
} > /run/redis/redis.conf
echo "role: $([ "$master" = "$self" ] && echo master || echo "replica of $master")"
