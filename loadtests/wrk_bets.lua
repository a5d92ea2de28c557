-- wrk script: replays pre-signed new bets from the file loadtests/wrk_bodies.py wrote, each
-- once (run wrk with one thread: -t1). Usage:
--   wrk -t1 -c4 -d10s --latency -s loadtests/wrk_bets.lua http://127.0.0.1:8080/withdraw -- bets.tsv
local requests = {}
local next_index = 0

init = function(args)
  for line in io.lines(args[1]) do
    local signature, public_key, body = line:match("([^\t]*)\t([^\t]*)\t(.*)")
    requests[#requests + 1] = wrk.format("POST", "/withdraw", {
      ["X-Signature"] = signature, ["X-Public-Key"] = public_key,
      ["Content-Type"] = "application/json",
    }, body)
  end
end

request = function()
  next_index = next_index + 1
  if next_index > #requests then
    next_index = 1  -- past the end, bets repeat: answered as idempotent replays
  end
  return requests[next_index]
end
