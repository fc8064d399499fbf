-- soak.lua: the requests of wrk_scripts/rank.lua, paced. Every connection waits `delay_us`
-- microseconds (on average) between an answer and its next request, so that C connections send
-- about C / (latency + delay) requests per second; the soak driver (soak.py) adjusts delay_us from
-- one segment to the next to hold a target rate.
--
--   wrk -t2 -c64 -d10s -s tests/faults/soak.lua http://127.0.0.1:8002/rank -- delay_us=20500 items=10
--
-- Every other argument, and done()'s JSON line, are rank.lua's.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "../../wrk_scripts/rank.lua")

local rank_init = init

function init(args)
   local rest = {}
   delay_ms = 0
   for _, arg in ipairs(args) do
      local value = string.match(arg, "^delay_us=(%d+)$")
      if value then
         delay_ms = tonumber(value) / 1000
      else
         rest[#rest + 1] = arg
      end
   end
   rank_init(rest)
end

function delay()
   -- wrk takes whole milliseconds: dither between floor and ceil to hit a fractional mean.
   local base = math.floor(delay_ms)
   if math.random() < delay_ms - base then
      return base + 1
   end
   return base
end
