-- wrk script: POST /v1/exchange with a different pre-minted CI token on every request.
-- BENCH_TOKENS names a file of tokens, one per line; each wrk thread takes its own slice, so no
-- token is sent twice as long as the file holds more tokens than the run sends (run.py checks
-- that every response was a 2xx). done() prints one machine-readable line for run.py.

local next_thread = 0

function setup(thread)
  thread:set("tid", next_thread)
  next_thread = next_thread + 1
end

function init(args)
  local nthreads = tonumber(os.getenv("BENCH_WRK_THREADS") or "1")
  local me = tid or 0
  tokens = {}
  local i = 0
  for line in io.lines(os.getenv("BENCH_TOKENS")) do
    if i % nthreads == me then
      tokens[#tokens + 1] = line
    end
    i = i + 1
  end
  idx = 0
  body = '{"role": "' .. (os.getenv("BENCH_ROLE") or "bench-deploy") .. '"}'
end

function request()
  idx = idx + 1
  if idx > #tokens then
    idx = 1
  end
  return wrk.format("POST", "/v1/exchange",
    {["Authorization"] = "Bearer " .. tokens[idx], ["Content-Type"] = "application/json"}, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
