-- wrk script: one small non-streaming chat completion per request; the model comes from BENCH_MODEL.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"' .. (os.getenv("BENCH_MODEL") or "bench-model") ..
           '","messages":[{"role":"user","content":"Say hello in five words."}]}'
