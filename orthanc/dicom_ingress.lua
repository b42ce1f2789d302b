-- DICOM ingress policy, checked for every instance before Orthanc stores it.
--
-- 1. Who may send. Orthanc 1.10 cannot bind its DICOM port to one interface, so this filter
--    makes it behave as if it listened on loopback: instances stored from this machine are
--    accepted, instances from elsewhere only from a modality registered in DICOM_MODALITIES (AE
--    title and host both checked).
-- 2. One Study Instance UID, one patient. Orthanc files a study under PatientID and
--    StudyInstanceUID together, so the same UID sent under another patient id (or one SOP
--    instance re-sent with another PatientID) would become a second Orthanc study that DICOMweb
--    serves under the same UID: the viewer would mix two patients' images. Such an instance is
--    refused, whoever sends it (C-STORE, REST upload); the study already stored stays as it was.
--    One exception, for the sidecar's patient reconciliation (a merge, a changed identifier, a
--    study moved to its order's patient): before re-filing a study's instances under the new
--    patient id, the sidecar marks the Orthanc study they leave with that id (user metadata
--    PatientReassignment). An instance uploaded through the REST API under exactly that id is
--    accepted; the sidecar deletes each old instance once its new copy is stored, so nothing is
--    ever missing. The marker never admits an instance sent over DICOM.
--
-- Refusal is by raising an error: Orthanc then answers the C-STORE with a failure status and
-- stores nothing. Returning false would discard the instance yet answer Success (0x0000) to the
-- modality, which would then believe the image is archived. Never do that. Error texts name no
-- patient data: Orthanc writes them to its log.
--
-- The registered modalities are Orthanc's own DicomModalities, read once when the script
-- loads: `make run` (sidecar/launcher/orthanc.py) and the docker-compose container
-- (orthanc/configure.py) both write them from DICOM_MODALITIES, and load this same file.

-- AE title -> set of hosts. An entry is {"AET", "Host", "Port"} or [AET, host, port].
local function registered_modalities()
  local registered = {}
  for _, modality in pairs(GetOrthancConfiguration()["DicomModalities"] or {}) do
    local aet = modality["AET"] or modality[1]
    local host = modality["Host"] or modality[2]
    if aet ~= nil and host ~= nil then
      registered[aet] = registered[aet] or {}
      registered[aet][host] = true
    end
  end
  return registered
end

local REGISTERED_MODALITIES = registered_modalities()

local function is_loopback(ip)
  return ip == "::1" or string.sub(ip, 1, 4) == "127." or string.sub(ip, 1, 7) == "::ffff:127."
end

local function may_send(origin)
  if origin["RequestOrigin"] ~= "DicomProtocol" then
    return true
  end
  local ip = origin["RemoteIp"] or ""
  if is_loopback(ip) then
    return true
  end
  local hosts = REGISTERED_MODALITIES[origin["RemoteAet"] or ""]
  return hosts ~= nil and hosts[ip] == true
end

-- The patient id each Study Instance UID was last accepted under, and when (os.time()), so that
-- a study's later instances cost a table lookup rather than two REST calls each (measured: the
-- calls took a fifth off C-STORE throughput, a third more of Orthanc's CPU per instance). Only a
-- match skips the check: a different patient id is always checked against Orthanc itself (the
-- first study may have been deleted since). And a match only for ACCEPTED_SECONDS: in a cluster,
-- another node's Orthanc may since have stored the UID under another patient (the first study
-- deleted, or re-filed by the sidecar's patient reconciliation through that node), which this
-- table cannot know and the index the nodes share does. Two associations on two nodes racing
-- within that time is the same race as two associations on one node; the sidecar flags a study
-- that got in under two patients either way. A study's instances arrive in bursts: one check
-- every ACCEPTED_SECONDS per study costs nothing measurable.
local accepted_patient = {}
local accepted_at = {}
local accepted_count = 0
local ACCEPTED_LIMIT = 10000
local ACCEPTED_SECONDS = 2

-- Whether the sidecar is re-filing this Orthanc study under `patient_id` (see the header).
local function reassigned_to(study_id, patient_id, origin)
  if origin["RequestOrigin"] ~= "RestApi" then
    return false
  end
  local names = ParseJson(RestApiGet("/studies/" .. study_id .. "/metadata"))
  for _, name in ipairs(names) do
    if name == "PatientReassignment" then
      return RestApiGet("/studies/" .. study_id .. "/metadata/PatientReassignment") == patient_id
    end
  end
  return false
end

-- Whether Orthanc already holds this Study Instance UID under another patient id.
local function under_another_patient(dicom, origin)
  local uid = dicom["StudyInstanceUID"] or ""
  if uid == "" then
    return false
  end
  local patient_id = dicom["PatientID"] or ""
  local now = os.time()
  if accepted_patient[uid] == patient_id and now - accepted_at[uid] < ACCEPTED_SECONDS then
    return false
  end
  for _, resource in ipairs(ParseJson(RestApiPost("/tools/lookup", uid))) do
    if resource["Type"] == "Study" then
      local study = ParseJson(RestApiGet("/studies/" .. resource["ID"]))
      if (study["PatientMainDicomTags"]["PatientID"] or "") ~= patient_id
          and not reassigned_to(resource["ID"], patient_id, origin) then
        return true
      end
    end
  end
  if accepted_count >= ACCEPTED_LIMIT then
    accepted_patient, accepted_at, accepted_count = {}, {}, 0
  end
  if accepted_patient[uid] == nil then
    accepted_count = accepted_count + 1
  end
  accepted_patient[uid] = patient_id
  accepted_at[uid] = now
  return false
end

function ReceivedInstanceFilter(dicom, origin, info)
  if not may_send(origin) then
    error("C-STORE refused: calling AE title and host are not a registered modality")
  end
  if under_another_patient(dicom, origin) then
    error("instance refused: its Study Instance UID is already stored under another patient id")
  end
  return true
end
