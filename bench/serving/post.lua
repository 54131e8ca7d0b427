-- wrk script for bench/serving/run.py: POST the JSON body in the file $BENCH_BODY_FILE and time
-- every request here, then print one line "BENCH_JSON {...}": counts, errors, and each
-- request's latency in microseconds (run.py pools the runs of a figure into exact percentiles).
--
--   BENCH_BODY_FILE=body.json wrk -t16 -c16 -d5s -s post.lua http://127.0.0.1:3000/predict
--
-- Run it with as many threads as connections (-tN -cN): each thread then has one request in
-- flight, so request() and response() pair up. wrk's own latency histogram is not used: on
-- this project's machines (Debian's wrk 4.1.0) it reports latencies whose sum far exceeds the
-- run time at -c1, while the same requests timed here (CLOCK_MONOTONIC) add up.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local now = ffi.new("bench_timespec")
local function now_us()
   ffi.C.clock_gettime(CLOCK_MONOTONIC, now)
   return tonumber(now.tv_sec) * 1000000 + tonumber(now.tv_nsec) / 1000
end

local path = os.getenv("BENCH_BODY_FILE")
if not path then
   error("set BENCH_BODY_FILE to the file holding the request body")
end
local file = assert(io.open(path, "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"

-- Per thread (each thread runs this script in a Lua state of its own).
local prepared, started = nil, 0
latencies = {} -- global, so that done() can read it with thread:get()
not_ok = 0     -- answers other than 2xx

function init(args)
   prepared = wrk.format()
end

function request()
   started = now_us()
   return prepared
end

function response(status, headers, body)
   latencies[#latencies + 1] = now_us() - started
   if status < 200 or status > 299 then
      not_ok = not_ok + 1
   end
end

-- Main state: collects the threads, reports once at the end.
local threads = {}

function setup(thread)
   threads[#threads + 1] = thread
end

function done(summary, latency, requests)
   local parts, bad = {}, 0
   for _, thread in ipairs(threads) do
      for _, us in ipairs(thread:get("latencies")) do
         parts[#parts + 1] = string.format("%.1f", us)
      end
      bad = bad + thread:get("not_ok")
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"not_2xx":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},"latencies_us":[%s]}\n',
      summary.requests, summary.duration, summary.bytes, bad,
      e.connect, e.read, e.write, e.status, e.timeout, table.concat(parts, ",")))
end
