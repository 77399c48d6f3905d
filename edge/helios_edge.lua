-- Helios REST edge: the Lua filter that runs before grpc_json_transcoder.
--
-- Request path (every request):
--   * drops any client-sent `x-helios-edge` and `x-helios-client` header (the latter is the
--     api_key_auth filter's word on who the caller is; a client never sets it);
--   * on REST requests (path under /v1/, not gRPC) sets `x-helios-edge: rest`, so the proxy
--     reports a failure after a stream began as a final `data: {"error": {...}}` event,
--     and drops `grpc-timeout` (a gRPC header: on a REST call Envoy's router would take it
--     as the route's timeout and answer 504) and `te` (the gRPC servers refuse any value
--     but "trailers");
--   * on POST /v1/chat/completions, /v1/completions and /v1/embeddings buffers the JSON
--     body and, when its top-level `stream` member is `true` (chat and completions; an
--     embeddings request never streams), rewrites :path to the `:stream` method path
--     (the OpenAI SDK posts streamed requests to the same path as unary ones); sets
--     `x-helios-model` to the body's top-level `model` (the control plane's per-model routes
--     match on it: a warm model goes straight to a worker) and `x-helios-prefix-hash` to a
--     hash of the prompt's first bytes (consistent hashing for prefix-aware models). A
--     REST client's own `x-helios-model` is dropped; native gRPC clients set it themselves.
-- Response path (REST requests only):
--   * status >= 400: rewrites the body into OpenAI's error shape
--     {"error": {"message", "type", "param", "code"}} (code: the gRPC status name or null),
--     with internal addresses (ip:port) and server paths in the message replaced;
--   * HEAD: no body, whatever the status;
--   * text/event-stream: never touched (the upstream prints the events, `data: [DONE]`
--     included: a worker's REST port for a warm model, Stream*Events RPCs otherwise; see
--     README.md).
--
-- edge/lua.py inlines this file into the bootstrap; each quoted @NAME@ is Python's NAME.
local EDGE_HEADER = "@EDGE_HEADER@"
local CLIENT_HEADER = "@CLIENT_HEADER@"
local MODEL_HEADER = "@MODEL_HEADER@"
local PREFIX_HASH_HEADER = "@PREFIX_HASH_HEADER@"
-- Model ids longer than this are not routed by header (the proxy answers them).
local MAX_MODEL_HEADER = "@MAX_ID_BYTES@"
-- The prompt bytes (raw JSON text of `messages` or `prompt`) the prefix hash covers.
local PREFIX_HASH_BYTES = 256
local METADATA_NS = "helios.edge"

local STREAM_PATHS = {
  ["/v1/chat/completions"] = "/v1/chat/completions:stream",
  ["/v1/completions"] = "/v1/completions:stream",
}
-- POST bodies whose `model` routes the request but that never stream (no `:stream` method).
local UNARY_MODEL_PATHS = {
  ["@EMBEDDINGS_PATH@"] = true,
}

local GRPC_CODE_NAMES = {
  [0] = "OK",
  "CANCELLED",
  "UNKNOWN",
  "INVALID_ARGUMENT",
  "DEADLINE_EXCEEDED",
  "NOT_FOUND",
  "ALREADY_EXISTS",
  "PERMISSION_DENIED",
  "RESOURCE_EXHAUSTED",
  "FAILED_PRECONDITION",
  "ABORTED",
  "OUT_OF_RANGE",
  "UNIMPLEMENTED",
  "INTERNAL",
  "UNAVAILABLE",
  "DATA_LOSS",
  "UNAUTHENTICATED",
}

local REASONS = {
  [400] = "Bad Request",
  [401] = "Unauthorized",
  [403] = "Forbidden",
  [404] = "Not Found",
  [405] = "Method Not Allowed",
  [408] = "Request Timeout",
  [409] = "Conflict",
  [413] = "Payload Too Large",
  [422] = "Unprocessable Entity",
  [429] = "Too Many Requests",
  [499] = "Client Closed Request",
  [500] = "Internal Server Error",
  [501] = "Not Implemented",
  [502] = "Bad Gateway",
  [503] = "Service Unavailable",
  [504] = "Gateway Timeout",
}

-- Envoy's local replies by body text: {gRPC code, the message a client sees}.
local ENVOY_REFUSALS = {
  ["Client authentication failed."] = {
    16, "a valid API key is required: Authorization: Bearer <key>"},
  ["Client is forbidden."] = {7, "this API key may not call this API"},
  ["local_rate_limited"] = {8, "rate limit exceeded for this API key; retry after Retry-After seconds"},
  ["Payload Too Large"] = {3, "the request body is larger than this endpoint accepts"},
}

-- Scans the top level of a JSON object without decoding it. Returns a table mapping each
-- top-level key (its raw text between the quotes) to its raw value text: a string keeps its
-- quotes and escapes, a literal is its text (true, 12, null), an object or array is its whole
-- text ({...} or [...]). Returns nil when the text is not a JSON object. Quotes inside JSON
-- strings are always escaped, so text inside a message's content is never taken for a key.
-- (Keys spelled with escapes, such as "stre\u0061m", are not decoded.)
local function top_level_fields(s)
  local i = s:find("[^ \t\r\n]")
  if i == nil or s:byte(i) ~= 123 then -- "{"
    return nil
  end
  local fields = {}
  local depth = 1
  local key = nil -- the top-level key whose value comes next
  local expect_key = true
  local nested_key, nested_start = nil, nil -- a top-level object/array value being skipped
  i = i + 1
  while true do
    local j = s:find('[{}%[%]",:]', i)
    if j == nil then
      return fields
    end
    local c = s:byte(j)
    if c == 34 then -- '"': find the closing quote, skipping escaped characters
      local k = j + 1
      while true do
        local q = s:find('["\\]', k)
        if q == nil then
          return fields
        end
        if s:byte(q) == 92 then
          k = q + 2
        else
          k = q
          break
        end
      end
      if depth == 1 then
        if expect_key then
          key = s:sub(j + 1, k - 1)
          expect_key = false
        elseif key ~= nil then
          fields[key] = s:sub(j, k)
          key = nil
        end
      end
      i = k + 1
    elseif c == 58 then -- ":"
      if depth == 1 and key ~= nil then
        local literal = s:match("^[ \t\r\n]*([%w%.%+%-]+)", j + 1)
        if literal ~= nil then
          fields[key] = literal
          key = nil
        end
      end
      i = j + 1
    elseif c == 44 then -- ","
      if depth == 1 then
        expect_key = true
        key = nil
      end
      i = j + 1
    elseif c == 123 or c == 91 then -- "{" or "["
      if depth == 1 and key ~= nil then
        nested_key, nested_start = key, j
        key = nil
      end
      depth = depth + 1
      i = j + 1
    else -- "}" or "]"
      depth = depth - 1
      if depth == 0 then
        return fields
      end
      if depth == 1 and nested_key ~= nil then
        fields[nested_key] = s:sub(nested_start, j)
        nested_key = nil
      end
      i = j + 1
    end
  end
end

local function json_string(s)
  local escaped = s:gsub('[%c"\\]', function(ch)
    if ch == '"' then
      return '\\"'
    elseif ch == "\\" then
      return "\\\\"
    elseif ch == "\n" then
      return "\\n"
    elseif ch == "\r" then
      return "\\r"
    elseif ch == "\t" then
      return "\\t"
    end
    return string.format("\\u%04x", ch:byte())
  end)
  return '"' .. escaped .. '"'
end

local function percent_decode(s)
  return (s:gsub("%%(%x%x)", function(hex)
    return string.char(tonumber(hex, 16))
  end))
end

local function trim(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

-- Replaces what an error must not show a client: internal addresses (ipv4:port,
-- [ipv6]:port, grpc's "ipv4:" peer names) and absolute paths under the usual server
-- roots (the state directory, models, the home directory).
local SERVER_ROOTS = {"tmp", "home", "root", "var", "etc", "usr", "opt", "srv", "proc", "sys",
  "run", "mnt", "data", "work", "private", "Users", "nix"}

local function scrub(s)
  s = s:gsub("ipv[46]:[%w%.%%%[%]:]+", "an internal address")
  s = s:gsub("%[[%x:]+%]:%d+", "an internal address")
  s = s:gsub("%d+%.%d+%.%d+%.%d+:%d+", "an internal address")
  s = s:gsub("localhost:%d+", "an internal address")
  for _, root in ipairs(SERVER_ROOTS) do
    s = s:gsub("/" .. root .. "/[^%s\\\"',;:]*", "a server path")
  end
  return s
end

local function error_type(status)
  if status == 401 then
    return "authentication_error"
  elseif status == 403 then
    return "permission_error"
  elseif status == 429 then
    return "rate_limit_error"
  elseif status == 503 then
    return "service_unavailable"
  elseif status >= 500 then
    return "server_error"
  end
  return "invalid_request_error"
end

local function is_grpc(headers)
  local ct = headers:get("content-type")
  return ct ~= nil and ct:sub(1, 16) == "application/grpc"
end

-- FNV-1a (32 bit) of the first PREFIX_HASH_BYTES bytes, as 8 hex digits.
local function prefix_hash(text)
  local hash = 2166136261
  for i = 1, math.min(#text, PREFIX_HASH_BYTES) do
    hash = bit.bxor(hash, text:byte(i))
    hash = bit.tobit(hash * 16777619)
  end
  return bit.tohex(hash, 8)
end

-- The model id from the body's raw `model` value: a plain JSON string without escapes,
-- in printable ASCII (a header value; gRPC servers refuse metadata that is not UTF-8, with
-- an ERROR record each time).
local function model_of(raw)
  if raw == nil or #raw < 3 or #raw > MAX_MODEL_HEADER + 2 then
    return nil
  end
  local id = raw:match('^"([^"\\%c]+)"$')
  if id == nil or id:find("[\128-\255 ]") then
    return nil
  end
  return id
end

function envoy_on_request(handle)
  local headers = handle:headers()
  headers:remove(EDGE_HEADER)
  headers:remove(CLIENT_HEADER)
  -- gRPC's `te` is "trailers" and nothing else: a gRPC server's HPACK parser refuses any
  -- other value, and the refusal failed the next requests on Envoy's shared upstream
  -- connection too (found by the fuzz suite, native gRPC with a `te` of its own).
  local te = headers:get("te")
  if te ~= nil and te ~= "trailers" then
    headers:replace("te", "trailers")
  end
  local path = headers:get(":path") or ""
  if path:sub(1, 4) ~= "/v1/" or is_grpc(headers) then
    return
  end
  headers:remove(MODEL_HEADER)
  headers:remove("grpc-timeout")
  headers:remove("te") -- gRPC's own ("trailers"); anything else a gRPC server refuses (500)
  headers:add(EDGE_HEADER, "rest")
  handle:streamInfo():dynamicMetadata():set(METADATA_NS, "rest", true)
  if headers:get(":method") == "HEAD" then
    handle:streamInfo():dynamicMetadata():set(METADATA_NS, "head", true)
  end

  local base, query = path:match("^([^?]*)(.*)$")
  local stream_path = STREAM_PATHS[base]
  local routed = stream_path ~= nil or UNARY_MODEL_PATHS[base]
  if not routed or headers:get(":method") ~= "POST" then
    return
  end
  local body = handle:body()
  if body == nil or body:length() == 0 then
    return
  end
  local fields = top_level_fields(body:getBytes(0, body:length()))
  if fields == nil then
    return
  end
  -- Wrappers do not survive the yield in body(): fetch the headers again.
  headers = handle:headers()
  local model = model_of(fields["model"])
  if model ~= nil then
    headers:replace(MODEL_HEADER, model)
    local prompt = fields["messages"] or fields["prompt"] or fields["input"] or ""
    headers:replace(PREFIX_HASH_HEADER, prefix_hash(prompt))
    handle:clearRouteCache()
  end
  -- Protobuf's JSON parser also reads the string "true" as a bool.
  if stream_path ~= nil and (fields["stream"] == "true" or fields["stream"] == '"true"') then
    headers:replace(":path", stream_path .. query)
    handle:clearRouteCache()
  end
end

local function rewrite_error(handle, status)
  local body = handle:body(true)
  local headers = handle:headers() -- wrappers do not survive the yield in body()
  local text = ""
  if body:length() > 0 then
    text = body:getBytes(0, body:length())
  end
  local fields = top_level_fields(text)
  if fields ~= nil and (fields["error"] or ""):sub(1, 1) == "{" then
    return -- already OpenAI-shaped
  end

  local code_number = nil
  local message = nil -- JSON text of the message
  if fields ~= nil then
    code_number = tonumber(fields["code"] or "")
    local raw = fields["message"]
    if raw ~= nil and raw:sub(1, 1) == '"' then
      message = raw
    end
  end
  if code_number == nil then
    code_number = tonumber(headers:get("grpc-status") or "")
  end
  -- Envoy's own refusals (api_key_auth, local_ratelimit) answer in plain text: give them
  -- the gRPC code a native client gets and a message that says what to do.
  local own = ENVOY_REFUSALS[trim(text)]
  if own ~= nil and code_number == nil then
    code_number = own[1]
    message = json_string(own[2])
  end
  if message == nil then
    local grpc_message = headers:get("grpc-message")
    if grpc_message ~= nil and grpc_message ~= "" then
      message = json_string(percent_decode(grpc_message))
    elseif fields == nil and trim(text) ~= "" then
      -- Envoy's and the transcoder's own text, which may quote the request's bytes (a JSON
      -- parse error shows where): at most 300 bytes of it, non-ASCII bytes as "?", so the
      -- answer stays valid UTF-8 JSON whatever the client sent.
      message = json_string((trim(text):sub(1, 300):gsub("[\128-\255]", "?")))
    else
      message = json_string(REASONS[status] or ("HTTP " .. status))
    end
  end
  local code = "null"
  if code_number ~= nil and GRPC_CODE_NAMES[code_number] ~= nil then
    code = '"' .. GRPC_CODE_NAMES[code_number] .. '"'
  end

  if status == 503 and headers:get("x-envoy-overloaded") ~= nil then
    -- A model's circuit breaker is full (Envoy sheds): say when to come back.
    code = '"UNAVAILABLE"'
    message = json_string("the model is at capacity; retry after Retry-After seconds")
    headers:replace("retry-after", "1")
  end

  local out = '{"error":{"message":' .. scrub(message) .. ',"type":"' .. error_type(status)
    .. '","param":null,"code":' .. code .. "}}"
  body:setBytes(out)
  headers:replace("content-type", "application/json")
  headers:replace("content-length", tostring(#out))
end

function envoy_on_response(handle)
  local meta = handle:streamInfo():dynamicMetadata():get(METADATA_NS)
  if meta == nil or meta["rest"] ~= true then
    return
  end
  local headers = handle:headers()
  local status = tonumber(headers:get(":status") or "") or 0
  if meta["head"] == true then
    local body = handle:body(true)
    if body ~= nil and body:length() > 0 then
      body:setBytes("")
    end
    handle:headers():replace("content-length", "0")
    return
  end
  if status >= 400 then
    rewrite_error(handle, status)
  end
end
