#!/bin/sh
# Writes /run/sentinel/sentinel.conf (sentinels rewrite their own config, so it lives
# in an emptyDir). A restarted sentinel follows the master its peers agree on.
set -eu
self="$(hostname).redis-sentinel-headless"
cli="valkey-cli"
if [ -s /etc/redis/tls/ca.crt ]; then
  cli="$cli --tls --cacert /etc/redis/tls/ca.crt --cert /etc/redis/tls/tls.crt --key /etc/redis/tls/tls.key"
fi
[ ! -s /run/sentinel/sentinel.conf ] || exit 0   # container restart: keep its state
master=""
for i in 0 1 2; do
  peer="redis-sentinel-$i.redis-sentinel-headless"
  [ "$peer" != "$self" ] || continue
  if answer=$(REDISCLI_AUTH="${SENTINEL_PASSWORD:-}" $cli -h "$peer" -p 26379 \
      sentinel get-master-addr-by-name tokenservice 2>/dev/null | head -n 1); then
    if [ -n "$answer" ]; then master="$answer"; break; fi
  fi
done
sed -e "s/^sentinel monitor tokenservice [^ ]* /sentinel monitor tokenservice ${master:-redis-0.redis-headless} /" \
  /etc/redis/conf/sentinel.conf > /run/sentinel/sentinel.conf
{
  echo "sentinel announce-ip $self"
  echo "sentinel auth-pass tokenservice \"$SENTINEL_MONITOR_PASSWORD\""
  if [ -n "${SENTINEL_PASSWORD:-}" ]; then
    echo "requirepass \"$SENTINEL_PASSWORD\""
    echo "sentinel sentinel-pass \"$SENTINEL_PASSWORD\""
  fi
} >> /run/sentinel/sentinel.conf
