-- wrk script: sends the pre-signed new bets loadtests/wrk_bodies.py wrote, each exactly once.
-- Thread k (from 0) reads PREFIX.k, one bet a line: signature TAB public key TAB body.
--   wrk -t2 -c32 -d10s -s loadtests/wrk_bets.lua http://127.0.0.1:8080/withdraw -- PREFIX once
-- "once": a thread that has sent all its bets stops (a replayed tx id is a cheap duplicate, not a
-- new bet) and done() reports it as exhausted; "repeat": past the end the bets start again (for
-- the empty handler, to which a replay costs what a new bet does).
-- done() prints one line, "WRK_SUMMARY {json}", that the bench parses; it says how much CPU
-- loading the bets took, which the bench leaves out of wrk's CPU per request.

local threads = {}

function setup(thread)
  thread:set("id", #threads)
  threads[#threads + 1] = thread
end

local requests = {}
local next_index = 0
local repeats = false

function init(args)
  local started = os.clock()
  repeats = args[2] == "repeat"
  for line in io.lines(args[1] .. "." .. id) do
    local signature, public_key, body = line:match("([^\t]*)\t([^\t]*)\t(.*)")
    requests[#requests + 1] = wrk.format("POST", nil, {
      ["X-Signature"] = signature, ["X-Public-Key"] = public_key,
      ["Content-Type"] = "application/json",
    }, body)
  end
  exhausted = 0
  -- the process CPU loading took (exactly this thread's with one thread; with more, the
  -- threads already running add theirs)
  wrk.thread:set("init_cpu_seconds", os.clock() - started)
end

function request()
  next_index = next_index + 1
  if next_index > #requests then
    if not repeats then
      exhausted = 1
      wrk.thread:stop()
      return requests[#requests]
    end
    next_index = 1
  end
  return requests[next_index]
end

function done(summary, latency, _)
  local exhausted_threads, init_cpu_seconds = 0, 0
  for _, thread in ipairs(threads) do
    exhausted_threads = exhausted_threads + thread:get("exhausted")
    init_cpu_seconds = init_cpu_seconds + thread:get("init_cpu_seconds")
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_SUMMARY {"requests": %d, "duration_us": %d, "errors": {"connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d}, "latency_us": {"p50": %d, "p95": %d, ' ..
    '"p99": %d, "max": %d}, "exhausted_threads": %d, "init_cpu_seconds": %.6f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max,
    exhausted_threads, init_cpu_seconds))
end
