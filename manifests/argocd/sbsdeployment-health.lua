-- Argo CD health check for sbs.dev/SBSDeployment (docs/packaging.md).
-- Healthy: the operator has observed the latest generation, Ready is True and nothing is moving.
-- Degraded: the Degraded condition is True (InsufficientGPUs, GroupFailed, InvalidSpec, ...).
-- Progressing: anything else: no status yet, a generation not yet observed (status or
-- conditions), groups being created or rolled, the scheduler not ready yet.
-- Suspended is not used. tests/packaging/test_argocd_health.py runs this file under Lua 5.1
-- (Argo CD's gopher-lua) on status objects the operator wrote on the e2e control plane.
local hs = {}

local function condition(conditions, type_)
  for _, c in ipairs(conditions or {}) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  local text = c.reason or ""
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  if text == "" then
    return fallback
  end
  return text
end

local generation = obj.metadata.generation or 0
if obj.status == nil or obj.status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end
if obj.status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation ..
    " (status is for generation " .. obj.status.observedGeneration .. ")"
  return hs
end

local conditions = obj.status.conditions
local ready = condition(conditions, "Ready")
local progressing = condition(conditions, "Progressing")
local degraded = condition(conditions, "Degraded")
for _, c in ipairs({ready, progressing, degraded}) do
  if c ~= nil and c.observedGeneration ~= nil and c.observedGeneration < generation then
    hs.status = "Progressing"
    hs.message = "Condition " .. c.type .. " is for generation " .. c.observedGeneration
    return hs
  end
end

if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(degraded, "Degraded")
  return hs
end
if ready ~= nil and ready.status == "True" and (progressing == nil or progressing.status ~= "True") then
  hs.status = "Healthy"
  hs.message = describe(ready, "Ready")
  return hs
end
hs.status = "Progressing"
if progressing ~= nil and progressing.status == "True" then
  hs.message = describe(progressing, "Progressing")
else
  hs.message = describe(ready, "Waiting for the Ready condition")
end
return hs
