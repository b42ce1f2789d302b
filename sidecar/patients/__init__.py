"""Patients: one identity (identifier and assigning authority) across HL7, DICOM and the API."""
