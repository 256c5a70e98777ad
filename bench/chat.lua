-- wrk script: one small non-streaming chat completion per request; the model comes from BENCH_MODEL.
-- BENCH_HEADERS adds headers, one "Name: value" a line (a peer that routes on headers needs them).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench"
for line in string.gmatch(os.getenv("BENCH_HEADERS") or "", "[^\n]+") do
  local name, value = string.match(line, "^%s*([^:]-)%s*:%s*(.-)%s*$")
  if name and name ~= "" then wrk.headers[name] = value end
end
wrk.body = '{"model":"' .. (os.getenv("BENCH_MODEL") or "bench-model") ..
           '","messages":[{"role":"user","content":"Say hello in five words."}]}'
