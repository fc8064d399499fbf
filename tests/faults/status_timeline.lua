-- status_timeline.lua: POST /rank with one fixed valid body, counting the answers of every
-- wall-clock second by status, so that a test can see when a server started answering 503 and when
-- it came back (the database-fault tests of tests/faults).
--
--   wrk -t1 -c16 -d20s --timeout 10s -s tests/faults/status_timeline.lua http://127.0.0.1:8001/rank
--
-- done() prints one JSON line: {"tool":"wrk","script":"status_timeline","requests":N,
--   "duration_us":D,"errors":{...},"latency_us":{"p50","p99","max"},
--   "seconds":[[unix_second, ok_200, s503, other_5xx, other], ...]}
-- os.time() has one-second resolution, which is what the buckets are.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   -- globals, one flat table per status class: done() reads them back through thread:get, which
   -- copies flat tables but crashes wrk 4.x on nested ones.
   ok, s503, s5xx, other = {}, {}, {}, {}
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
   wrk.body = '{"user_id": 7, "item_ids": [12, 99, 3, 4, 5, 6, 7, 8, 9, 10], "top_k": 5}'
end

function response(status, headers, body)
   local second = os.time()
   local t
   if status == 200 then t = ok
   elseif status == 503 then t = s503
   elseif status >= 500 then t = s5xx
   else t = other end
   t[second] = (t[second] or 0) + 1
end

function done(summary, latency, requests)
   local merged, seconds = {}, {}
   for _, thread in ipairs(threads) do
      for column, name in ipairs({"ok", "s503", "s5xx", "other"}) do
         for second, n in pairs(thread:get(name)) do
            local m = merged[second]
            if m == nil then
               m = {0, 0, 0, 0}
               merged[second] = m
               seconds[#seconds + 1] = second
            end
            m[column] = m[column] + n
         end
      end
   end
   table.sort(seconds)
   local rows = {}
   for _, second in ipairs(seconds) do
      local m = merged[second]
      rows[#rows + 1] = string.format("[%d,%d,%d,%d,%d]", second, m[1], m[2], m[3], m[4])
   end
   local e = summary.errors
   io.write(string.format('{"tool":"wrk","script":"status_timeline","requests":%d,"duration_us":%d,'
                          .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
                          .. '"latency_us":{"p50":%d,"p99":%d,"max":%d},"seconds":[%s]}\n',
                          summary.requests, summary.duration, e.connect, e.read, e.write, e.status,
                          e.timeout, latency:percentile(50), latency:percentile(99), latency.max,
                          table.concat(rows, ",")))
end
