-- DICOM ingress policy. Orthanc 1.10 cannot bind its DICOM port to one interface, so this filter
-- makes it behave as if it listened on loopback: instances stored from this machine are
-- accepted, instances from elsewhere only from a modality registered in DICOM_MODALITIES (AE
-- title and host both checked).
--
-- Refusal is by raising an error: Orthanc then answers the C-STORE with 0xA700 (Refused) and
-- stores nothing. Returning false would discard the instance yet answer Success (0x0000) to the
-- modality, which would then believe the image is archived. Never do that.
--
-- The launcher appends the line defining REGISTERED_MODALITIES (AE title -> host).

local function is_loopback(ip)
  return ip == "::1" or string.sub(ip, 1, 4) == "127." or string.sub(ip, 1, 7) == "::ffff:127."
end

function ReceivedInstanceFilter(dicom, origin, info)
  if origin["RequestOrigin"] ~= "DicomProtocol" then
    return true
  end
  local ip = origin["RemoteIp"] or ""
  if is_loopback(ip) then
    return true
  end
  local host = REGISTERED_MODALITIES[origin["RemoteAet"] or ""]
  if host ~= nil and host == ip then
    return true
  end
  error("C-STORE refused: calling AE title and host are not a registered modality")
end
