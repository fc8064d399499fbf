-- rank.lua: POST /rank with a random user and N distinct random item ids per request.
--
--   wrk -t1 -c32 -d10s -s wrk_scripts/rank.lua http://127.0.0.1:8002/rank -- items=100 top_k=20
--
-- Arguments after `--` (all optional, key=value):
--   items=10        candidate item ids per request (1..1000, distinct within a request)
--   top_k=10        top_k field of every request
--   user_min=1 user_max=200000   id range users are drawn from (uniform)
--   item_min=1 item_max=100000   id range items are drawn from (uniform)
--   seed=1          base random seed; thread k uses seed + 7919 * k, so runs are reproducible and
--                   every server receives the same request sequence. The generator is Park-Miller's
--                   minimal standard (x = x * 48271 mod 2^31-1, exact in Lua's doubles), not
--                   math.random, so that the database ceiling client (rankbench-ceiling) draws the
--                   very same ids: id = lo + x mod (hi - lo + 1), the items first, then the user
--   pool=1000       requests pre-built per thread in init() and sent round-robin, so request()
--                   costs a table lookup (wrk's own advice); pool=0 builds a fresh request each time
--   gzip=0          1: send `Accept-Encoding: gzip`, as the published study's Python clients did
--                   (python-requests), so a server with a GZip middleware compresses its answers
--
-- done() prints one JSON line (prefixed by nothing, starting with `{"tool":"wrk"`): the settings,
-- requests, duration, bytes, errors by kind, wrk's CPU seconds after init() and when done() starts,
-- latency summary and percentiles in microseconds, and the latency histogram [[value_us, count], ...]
-- (wrk applies its coordinated-omission correction to it before done(); see rankbench/histogram.py).
-- `response` stays undefined: wrk then skips header/body parsing and counts status > 399 itself.

local threads = {}
local thread_count = 0

function setup(thread)
   thread:set("thread_id", thread_count)
   thread_count = thread_count + 1
   table.insert(threads, thread)
end

local function fail(message)
   io.stderr:write("rank.lua: ", message, "\n")
   os.exit(2)
end

local function parse_args(args)
   local cfg = {items = 10, top_k = 10, user_min = 1, user_max = 200000,
                item_min = 1, item_max = 100000, seed = 1, pool = 1000, gzip = 0}
   for _, arg in ipairs(args) do
      local key, value = string.match(arg, "^([%w_]+)=(-?%d+)$")
      if key == nil or cfg[key] == nil then
         fail("bad argument '" .. arg .. "' (expected key=integer, keys: items top_k "
              .. "user_min user_max item_min item_max seed pool)")
      end
      cfg[key] = tonumber(value)
   end
   if cfg.items < 1 or cfg.items > 1000 then fail("items must be in 1..1000") end
   if cfg.top_k < 1 or cfg.top_k > 1000 then fail("top_k must be in 1..1000") end
   if cfg.user_min > cfg.user_max then fail("user_min > user_max") end
   if cfg.item_max - cfg.item_min + 1 < cfg.items then
      fail("item range holds fewer ids than items=" .. cfg.items)
   end
   if cfg.pool < 0 then fail("pool must be >= 0") end
   return cfg
end

-- Park-Miller minimal standard generator; the state stays in 1..M-1.
local M, A = 2147483647, 48271
local state = 1

local function seed_generator(seed)
   state = seed % M
   if state <= 0 then state = state + M - 1 end
end

local function randint(lo, hi)
   state = (state * A) % M
   return lo + state % (hi - lo + 1)
end

local function build_request(cfg)
   local seen, ids, n = {}, {}, 0
   while n < cfg.items do
      local id = randint(cfg.item_min, cfg.item_max)
      if not seen[id] then
         seen[id] = true
         n = n + 1
         ids[n] = id
      end
   end
   local body = string.format('{"user_id":%d,"item_ids":[%s],"top_k":%d}',
                              randint(cfg.user_min, cfg.user_max), table.concat(ids, ","),
                              cfg.top_k)
   return wrk.format("POST", nil, nil, body)
end

function init(args)
   config = parse_args(args)  -- global: done() reads it back through thread:get
   seed_generator(config.seed + 7919 * (thread_id or 0))
   wrk.headers["Content-Type"] = "application/json"
   if config.gzip == 1 then wrk.headers["Accept-Encoding"] = "gzip" end
   if config.pool > 0 then
      local pool = {}
      for i = 1, config.pool do pool[i] = build_request(config) end
      local next_index, size = 0, config.pool
      request = function()
         next_index = next_index % size + 1
         return pool[next_index]
      end
   else
      request = function() return build_request(config) end
   end
   -- Process CPU seconds (all threads) once this thread's requests are built: done() reports the
   -- CPU of the load itself, without building the pool before and printing the histogram after.
   cpu_after_init = os.clock()
end

local function number(x)
   if x == math.floor(x) and math.abs(x) < 2^53 then return string.format("%d", x) end
   return string.format("%.3f", x)
end

function done(summary, latency, requests)
   local cpu_at_done = os.clock()
   local cpu_after_init = 0
   for _, thread in ipairs(threads) do
      cpu_after_init = math.max(cpu_after_init, thread:get("cpu_after_init") or 0)
   end
   local cfg = threads[1] and threads[1]:get("config") or {}
   local out = {}
   local function add(s) out[#out + 1] = s end

   add('{"tool":"wrk","script":"rank","threads":' .. #threads)
   add(',"config":{')
   local first = true
   for _, key in ipairs({"items", "top_k", "user_min", "user_max", "item_min", "item_max",
                         "seed", "pool", "gzip"}) do
      if cfg[key] ~= nil then
         add((first and "" or ",") .. '"' .. key .. '":' .. number(cfg[key]))
         first = false
      end
   end
   add('}')
   add(',"requests":' .. number(summary.requests))
   add(',"duration_us":' .. number(summary.duration))
   add(',"bytes":' .. number(summary.bytes))
   add(string.format(',"cpu_s":{"after_init":%.6f,"at_done":%.6f}', cpu_after_init, cpu_at_done))
   local e = summary.errors
   add(string.format(',"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}',
                     e.connect, e.read, e.write, e.status, e.timeout))
   local count = #latency
   if count > 0 then
      add(',"latency_us":{"min":' .. number(latency.min) .. ',"mean":' .. number(latency.mean)
          .. ',"stdev":' .. number(latency.stdev) .. ',"max":' .. number(latency.max))
      for _, p in ipairs({{"p50", 50}, {"p75", 75}, {"p90", 90}, {"p95", 95}, {"p99", 99},
                          {"p99.9", 99.9}, {"p99.99", 99.99}}) do
         add(',"' .. p[1] .. '":' .. number(latency:percentile(p[2])))
      end
      add('}')
   else
      add(',"latency_us":null')
   end
   -- latency(i) is the i-th distinct recorded value (microseconds) and how often it was seen.
   add(',"histogram":[')
   for i = 1, count do
      local value, n = latency(i)
      add((i > 1 and "," or "") .. "[" .. number(value) .. "," .. number(n) .. "]")
   end
   add(']}')
   io.write(table.concat(out), "\n")
end
