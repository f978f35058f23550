-- wrk script: every request is the next line of a file (pre-signed notifications, bills...), so
-- each request is distinct. The thread stops when the file is exhausted, so nothing is resent.
--   wrk ... -s bench/wrk_lines.lua URL -- FILE KIND [TOKEN]
-- KIND: alipay (form body), bill (JSON body, bearer TOKEN), wechat (ts\tnonce\tsig\tserial\tbody),
--       same-alipay (the first line, forever: pure duplicates)
-- Every request is formatted in init(), before wrk starts its clock, so the client spends the
-- same (next to nothing) per request whatever the kind: the rates of different kinds compare.
local requests = {}
local idx = 0
local same = false

local function split_tabs(s)
  local out = {}
  for part in string.gmatch(s, "([^\t]*)\t?") do out[#out + 1] = part end
  return out
end

local function format(kind, path, token, line)
  if kind == "alipay" or kind == "same-alipay" then
    return wrk.format("POST", path, {["Content-Type"] = "application/x-www-form-urlencoded; charset=utf-8"}, line)
  elseif kind == "bill" then
    return wrk.format("POST", path, {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}, line)
  elseif kind == "wechat" then
    local f = split_tabs(line)
    return wrk.format("POST", path, {
      ["Content-Type"] = "application/json",
      ["Wechatpay-Timestamp"] = f[1], ["Wechatpay-Nonce"] = f[2], ["Wechatpay-Signature"] = f[3],
      ["Wechatpay-Serial"] = f[4], ["Wechatpay-Signature-Type"] = "WECHATPAY2-SHA256-RSA2048"}, f[5])
  end
  error("unknown kind " .. tostring(kind))
end

function init(args)
  local file, kind, token = args[1], args[2], args[3]
  same = kind == "same-alipay"
  for line in io.lines(file) do
    requests[#requests + 1] = format(kind, wrk.path, token, line)
    if same then break end
  end
end

function request()
  if same then
    return requests[1]
  end
  idx = idx + 1
  if idx > #requests then
    wrk.thread:stop()
    idx = 1
  end
  return requests[idx]
end

function done(summary, latency, requests)
  io.write(string.format("RESULT requests=%d duration_us=%d rps=%.0f p50_ms=%.3f p99_ms=%.3f errors=%d non2xx=%d\n",
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end
