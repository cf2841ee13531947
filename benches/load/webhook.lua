-- wrk script: POST Alertmanager payloads of 10 alerts to /webhook, every
-- request its own alert group (groupKey unique across threads). Label names
-- sorted, as Alertmanager sends them.
local threads = {}
local next_id = 0

function setup(thread)
  next_id = next_id + 1
  thread:set("tid", next_id)
  table.insert(threads, thread)
end

function init(args)
  prefix = "w" .. tostring(tid) .. "-"
  counter = 0
  bad = 0
  local alerts = {}
  for i = 1, 10 do
    alerts[i] = string.format('{"status":"firing","labels":{"alertname":"LoadTest","namespace":"bench","pod":"api-%d","severity":"critical"},"annotations":{"summary":"load test"},"startsAt":"2026-11-27T03:59:40.014258703Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"","fingerprint":"%d"}', i, i)
  end
  head = '{"receiver":"relay","status":"firing","alerts":[' .. table.concat(alerts, ",") .. '],"groupLabels":{"alertname":"LoadTest"},"commonLabels":{"alertname":"LoadTest"},"commonAnnotations":{},"externalURL":"http://am","version":"4","truncatedAlerts":0,"groupKey":"'
end

function request()
  counter = counter + 1
  local body = head .. prefix .. counter .. '"}'
  return wrk.format("POST", "/webhook", {["Content-Type"] = "application/json"}, body)
end

function response(status, headers, body)
  if status >= 300 then bad = bad + 1 end
end

function done(summary, latency, requests)
  local rejected = 0
  for _, t in ipairs(threads) do rejected = rejected + t:get("bad") end
  local e = summary.errors
  io.write(string.format('WRK_JSON {"requests": %d, "seconds": %.3f, "rejected": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration / 1e6, rejected, e.connect + e.read + e.write + e.timeout))
end
