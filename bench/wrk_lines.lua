-- wrk script: every request is the next line of a file (pre-signed notifications, bills...), so
-- each request is distinct. The thread stops when the file is exhausted, so nothing is resent.
--   wrk ... -s bench/wrk_lines.lua URL -- FILE KIND [TOKEN]
-- KIND: alipay (form body), bill (JSON body, bearer TOKEN), wechat (ts\tnonce\tsig\tserial\tbody),
--       same-alipay (the first line, forever: pure duplicates)
local lines = {}
local idx = 0
local kind, token, path

function init(args)
  local file = args[1]
  kind = args[2]
  token = args[3]
  for line in io.lines(file) do lines[#lines + 1] = line end
  path = wrk.path
end

local function split_tabs(s)
  local out = {}
  for part in string.gmatch(s, "([^\t]*)\t?") do out[#out + 1] = part end
  return out
end

function request()
  idx = idx + 1
  if kind == "same-alipay" then
    return wrk.format("POST", path, {["Content-Type"] = "application/x-www-form-urlencoded; charset=utf-8"}, lines[1])
  end
  if idx > #lines then
    wrk.thread:stop()
    idx = 1
  end
  local line = lines[idx]
  if kind == "alipay" then
    return wrk.format("POST", path, {["Content-Type"] = "application/x-www-form-urlencoded; charset=utf-8"}, line)
  elseif kind == "bill" then
    return wrk.format("POST", path, {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}, line)
  else
    local f = split_tabs(line)
    return wrk.format("POST", path, {
      ["Content-Type"] = "application/json",
      ["Wechatpay-Timestamp"] = f[1], ["Wechatpay-Nonce"] = f[2], ["Wechatpay-Signature"] = f[3],
      ["Wechatpay-Serial"] = f[4], ["Wechatpay-Signature-Type"] = "WECHATPAY2-SHA256-RSA2048"}, f[5])
  end
end

function done(summary, latency, requests)
  io.write(string.format("RESULT requests=%d duration_us=%d rps=%.0f p50_ms=%.3f p99_ms=%.3f errors=%d non2xx=%d\n",
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end
