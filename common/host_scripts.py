"""Every Lua script that writes host keys (layout in common.records), in one place.

Each script declares every key it touches in KEYS (Redis Cluster's rule; the host id a new guid
takes is found by `HOST_ID` first, so the host's own key can be named). Zone membership (the
zone's sorted set of ranked ids, the set of zones, a `hosts.changed` event when the set
changed) is one fragment, `_ZONE`, shared by every script that moves a host in or out of a zone.

A session's writes carry its token: the startup of a newer attempt takes the host over; any
later write (an ack, last_seen, a disconnect, a re-assert) is a compare of the token, so a server
that lost a session never overwrites state written by a newer session of the same host.
"""

from __future__ import annotations

# join_zone(zone set, zones set, zone, id, ranked, channel, event): the host is in the zone's
# ranking iff ranked; the zone is listed; a change of the ranking is published. Returns 1 if
# the ranking changed. leave_zone(zone set, id, channel, event): likewise, out of the ranking.
_ZONE = """
local function join_zone(zone_set, zones, zone, id, ranked, channel, event)
  redis.call('SADD', zones, zone)
  local moved
  if ranked == '1' then
    moved = redis.call('ZADD', zone_set, id, id)
  else
    moved = redis.call('ZREM', zone_set, id)
  end
  if moved == 1 then redis.call('PUBLISH', channel, event) end
  return moved
end
local function leave_zone(zone_set, id, channel, event)
  local moved = redis.call('ZREM', zone_set, id)
  if moved == 1 then redis.call('PUBLISH', channel, event) end
  return moved
end
"""

# KEYS: guid map, id counter, revoked certificates. ARGV: guid, the session's certificate serial.
# Returns {id, 1 if the guid was new}: a new guid takes the next id (none is burned or reused);
# {-1, 0} when the certificate is revoked (nothing written).
HOST_ID = """
if ARGV[2] ~= '' and redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1 then return {-1, 0} end
local id = redis.call('HGET', KEYS[1], ARGV[1])
if id then
  if tonumber(redis.call('GET', KEYS[2]) or '0') < tonumber(id) then
    redis.call('SET', KEYS[2], id)
  end
  return {tonumber(id), 0}
end
id = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], ARGV[1], id)
return {id, 1}
"""

# KEYS: host hash, zone set, zones set.
# ARGV: id, zone, events channel, hosts.changed event of the zone, ranked ('1' | '0'),
#       the hash's fields (a JSON array: field, value, ...), the startup's attempt stamp,
#       now (Unix seconds), how recent a live session's last_seen is (seconds).
# Returns {previous zone, the host's rank in the zone (the zone's size for an unranked host,
# which ranks last), the zone's size, 1 if refused as stale}. A startup whose attempt is older
# than that of the host's live session (connected, last_seen recent) was given up by its agent
# (it was read late, after a stall): it writes nothing.
START_SESSION = (
    _ZONE
    + """
local live = redis.call('HMGET', KEYS[1], 'attempt', 'state', 'last_seen', 'zone')
if (tonumber(live[1] or '') or 0) > tonumber(ARGV[7]) and live[2] == 'connected'
    and tonumber(ARGV[8]) - (tonumber(live[3] or '') or 0) < tonumber(ARGV[9]) then
  return {'', 0, 0, 1}
end
redis.call('HSET', KEYS[1], unpack(cjson.decode(ARGV[6])))
join_zone(KEYS[2], KEYS[3], ARGV[2], ARGV[1], ARGV[5], ARGV[3], ARGV[4])
local count = redis.call('ZCARD', KEYS[2])
local rank = count
if ARGV[5] == '1' then rank = redis.call('ZRANK', KEYS[2], ARGV[1]) end
return {live[4] or '', rank, count, 0}
"""
)

# KEYS: a zone set the host left. ARGV: id, events channel, hosts.changed event of that zone.
LEAVE_ZONE = (
    _ZONE
    + """
return leave_zone(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
"""
)

# KEYS: host hash, guid map, id counter, zone set, zones set.
# ARGV: token, id, guid, zone, events channel, hosts.changed event, ranked ('1' | '0'),
#       the hash's fields (a JSON array).
# Re-asserts a served host (recreating what an emptied Redis lost). Returns {1 written or 0
# superseded (another session owns the host), previous zone}.
ASSERT_SESSION = (
    _ZONE
    + """
local current = redis.call('HGET', KEYS[1], 'session')
if current and current ~= ARGV[1] then return {0, ''} end
local old_zone = redis.call('HGET', KEYS[1], 'zone') or ''
redis.call('HSET', KEYS[1], unpack(cjson.decode(ARGV[8])))
redis.call('HSETNX', KEYS[2], ARGV[3], ARGV[2])
if tonumber(redis.call('GET', KEYS[3]) or '0') < tonumber(ARGV[2]) then
  redis.call('SET', KEYS[3], ARGV[2])
end
join_zone(KEYS[4], KEYS[5], ARGV[4], ARGV[2], ARGV[7], ARGV[5], ARGV[6])
return {1, old_zone}
"""
)

# KEYS: host hash. ARGV: token, fields (a JSON array). 1 written, 0 superseded, -1 missing.
UPDATE_SESSION = """
local current = redis.call('HGET', KEYS[1], 'session')
if not current then return -1 end
if current ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], unpack(cjson.decode(ARGV[2])))
return 1
"""

# KEYS: host hash, guid map, liveness key of the host's server, the host's zone set, the
#       certificates issued to the host's guid, revoked certificates.
# ARGV: id, zone and server (as read before), events channel, hosts.changed event of the zone,
#       guid (as read before), hosts.revoked event of the guid, now (Unix seconds).
# Returns {status, detail}: missing; moved (guid, zone or server changed since they were read:
# read again); busy (connected to a live server: detail = server); removed (detail = how many
# certificates were revoked). Removing revokes: every certificate issued to the guid moves into
# the revoked hash (unless the guid now maps to another host id, whose certificates they are),
# and `hosts.revoked` is published. Revoked entries past their expiry are dropped (TLS refuses
# an expired certificate anyway).
REMOVE_HOST = (
    _ZONE
    + """
local fields = redis.call('HMGET', KEYS[1], 'guid', 'zone', 'state', 'server')
if not fields[1] then return {'missing', ''} end
if fields[1] ~= ARGV[6] or (fields[2] or '') ~= ARGV[2] or (fields[4] or '') ~= ARGV[3] then
  return {'moved', ''}
end
if fields[3] == 'connected' and redis.call('EXISTS', KEYS[3]) == 1 then
  return {'busy', fields[4]}
end
local owner = redis.call('HGET', KEYS[2], fields[1])
if owner == ARGV[1] then redis.call('HDEL', KEYS[2], fields[1]) end
redis.call('DEL', KEYS[1])
leave_zone(KEYS[4], ARGV[1], ARGV[4], ARGV[5])
local revoked = 0
if not owner or owner == ARGV[1] then
  local issued = redis.call('HGETALL', KEYS[5])
  for i = 1, #issued, 2 do redis.call('HSET', KEYS[6], issued[i], issued[i + 1]) end
  redis.call('DEL', KEYS[5])
  revoked = #issued / 2
  redis.call('PUBLISH', ARGV[4], ARGV[7])
end
local now = tonumber(ARGV[8])
local all = redis.call('HGETALL', KEYS[6])
for i = 1, #all, 2 do
  local expires = tonumber(all[i + 1])
  if expires and expires <= now then redis.call('HDEL', KEYS[6], all[i]) end
end
return {'removed', tostring(revoked)}
"""
)
