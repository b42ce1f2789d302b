"""HL7 v2 messaging with the hospital information system (MLLP, ORM in, ORU out)."""
