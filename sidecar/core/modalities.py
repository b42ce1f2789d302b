"""The modalities registered in DICOM_MODALITIES (`AET@host:port,...`): Orthanc's DicomModalities
(sidecar.launcher.orthanc), who may query the worklist, and who may report performed procedure
steps (sidecar.mpps.scp)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RegisteredModality:
    aet: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> RegisteredModality:
        """`AET@host:port`, as in DICOM_MODALITIES."""
        try:
            aet, address = text.strip().split("@", 1)
            host, port = address.rsplit(":", 1)
            modality = cls(aet=aet.strip(), host=host.strip(), port=int(port))
        except ValueError as exc:
            raise ValueError(f"modality {text!r} is not AET@host:port") from exc
        if not 1 <= len(modality.aet) <= 16 or not modality.host:
            raise ValueError(f"modality {text!r}: AE title 1-16 characters and a host required")
        return modality


def parse_modalities(text: str) -> list[RegisteredModality]:
    return [RegisteredModality.parse(item) for item in text.split(",") if item.strip()]
