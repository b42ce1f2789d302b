"""Whether an image's Modality and Body Part Examined contradict what was ordered.

Both checks would rather stay silent than cry wolf: a contradiction is a high-severity finding
(the images may belong to another order, or another patient), so a value either side does not
know is no contradiction, and names that mean the same acquisition or the same region agree.

Modalities agree when equal or in one family: projection radiography (CR, DX and the
non-DICOM XR, RX, DR, RG an order may carry), fluoroscopy and angiography (RF, XA), and hybrid
imaging, where a PET or SPECT order brings a CT or MR for attenuation correction and anatomy.
Images that are not an acquisition (secondary captures such as a dose screen, modality OT, SC
or DOC) are not compared at all.

Body parts are compared as regions, not words: each term (DICOM's defined terms of PS3.16
Annex L, and the plain words orders use: THORAX, LUNGS, ABD, BRAIN, SINUS) names a set of
regions, and two terms agree when their sets meet. So CHEST agrees with THORAX, LUNG,
CHESTABDPELVIS and TSPINE (the thoracic spine is seen on a chest study, and the other way
round), ABDOMEN with ABDOMENPELVIS, but KNEE does not agree with FOOT, nor CHEST with HEAD.
A free-text order ("Chest PA", "LEFT KNEE") is read word by word; words that name no region
(views, sides) are ignored. Laterality is not compared.
"""

from __future__ import annotations

import re
from typing import Final

_RADIOGRAPHY: Final = frozenset({"CR", "DX", "DR", "XR", "RX", "RG"})
_FLUOROSCOPY: Final = frozenset({"RF", "XA", "DS"})
_SPELLINGS: Final = {"MRI": "MR", "PET": "PT", "CAT": "CT", "MAMMO": "MG", "ULTRASOUND": "US"}
#: Modalities a study of the key's order may also hold.
_COMPANIONS: Final = {
    "PT": frozenset({"CT", "MR"}),
    "NM": frozenset({"CT"}),
}
#: Images that are not an acquisition: not compared with the order.
NOT_ACQUISITIONS: Final = frozenset({"OT", "SC", "DOC", "SR", "KO", "PR"})
SECONDARY_CAPTURE_CLASS_PREFIX: Final = "1.2.840.10008.5.1.4.1.1.7"


def _modality(text: str) -> str:
    code = text.strip().upper()
    return _SPELLINGS.get(code, code)


def modality_contradicts(image_modality: str | None, ordered_modality: str | None) -> bool:
    """True when the image's modality cannot be an acquisition of the ordered one."""
    if not image_modality or not ordered_modality:
        return False
    image, ordered = _modality(image_modality), _modality(ordered_modality)
    if not image or not ordered or image in NOT_ACQUISITIONS:
        return False
    if image == ordered:
        return False
    for family in (_RADIOGRAPHY, _FLUOROSCOPY):
        if image in family and ordered in family:
            return False
    return image not in _COMPANIONS.get(ordered, frozenset())


_HEAD, _NECK, _CHEST, _ABDOMEN, _PELVIS = "head", "neck", "chest", "abdomen", "pelvis"
_C, _T, _L, _S = "cervical spine", "thoracic spine", "lumbar spine", "sacrum"
_BREAST = "breast"
_UPPER = ("shoulder", "upper arm", "elbow", "forearm", "wrist", "hand")
_LOWER = ("hip", "thigh", "knee", "lower leg", "ankle", "foot")
_TRUNK = (_NECK, _CHEST, _ABDOMEN, _PELVIS, _C, _T, _L, _S)


def _each(words: str, names: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    return dict.fromkeys(words.split(), names)


_REGIONS: Final[dict[str, tuple[str, ...]]] = {
    # head and neck
    **_each(
        "HEAD SKULL BRAIN CEREBELLUM CIRCLEOFWILLIS FACE ORBIT EYE EYELID CORNEA EAR IAC SELLA"
        " TMJ JAW MANDIBLE MAXILLA ZYGOMA NOSE SINUS SINUSES MOUTH CHEEK",
        (_HEAD,),
    ),
    **_each("NECK LARYNX PHARYNX THYROID CAROTID PAROTID", (_NECK,)),
    "HEADNECK": (_HEAD, _NECK),
    # trunk
    **_each(
        "CHEST THORAX LUNG HEART MEDIASTINUM RIB STERNUM THYMUS TRACHEA BRONCHUS ESOPHAGUS"
        " CORONARYARTERY CARDIAC",
        (_CHEST,),
    ),
    "AORTA": (_CHEST, _ABDOMEN),
    **_each(
        "ABDOMEN ABD LIVER KIDNEY PANCREAS SPLEEN STOMACH GALLBLADDER ADRENAL DUODENUM JEJUNUM"
        " ILEUM BOWEL RENAL",
        (_ABDOMEN,),
    ),
    "COLON": (_ABDOMEN, _PELVIS),
    **_each(
        "PELVIS BLADDER PROSTATE UTERUS OVARY CERVIX RECTUM SIGMOID VAGINA TESTIS PENIS ILIUM"
        " BUTTOCK",
        (_PELVIS,),
    ),
    **_each("BREAST MAMMO", (_BREAST,)),
    "AXILLA": (_BREAST, _CHEST, "shoulder"),
    # compounds, spine
    "CHESTABDOMEN": (_CHEST, _ABDOMEN, _T, _L),
    **_each("CHESTABDPELVIS CHESTABDOMENPELVIS", (_CHEST, _ABDOMEN, _PELVIS, _T, _L, _S)),
    **_each("ABDOMENPELVIS ABDPELVIS", (_ABDOMEN, _PELVIS, _L, _S)),
    "NECKCHEST": (_NECK, _CHEST, _C, _T),
    "NECKCHESTABDOMEN": (_NECK, _CHEST, _ABDOMEN, _C, _T, _L),
    "NECKCHESTABDPELV": (_NECK, _CHEST, _ABDOMEN, _PELVIS, _C, _T, _L, _S),
    "WHOLEBODY": (_HEAD, *_TRUNK, _BREAST, *_UPPER, *_LOWER),
    "SPINE": (_C, _T, _L, _S),
    "BACK": (_T, _L),
    **_each("CSPINE CERVICAL", (_C, _NECK)),
    **_each("TSPINE THORACIC", (_T, _CHEST)),
    "CTSPINE": (_C, _T, _NECK, _CHEST),
    **_each("LSPINE LUMBAR", (_L, _ABDOMEN)),
    "TLSPINE": (_T, _L, _CHEST, _ABDOMEN),
    "LSSPINE": (_L, _S, _ABDOMEN, _PELVIS),
    **_each("SSPINE SACRUM COCCYX", (_S, _PELVIS)),
    # limbs
    **_each("SHOULDER SCAPULA", ("shoulder",)),
    "CLAVICLE": ("shoulder", _CHEST),
    "HUMERUS": ("upper arm",),
    "ARM": ("upper arm", "elbow", "forearm"),
    "ELBOW": ("elbow",),
    **_each("FOREARM RADIUS ULNA", ("forearm",)),
    "WRIST": ("wrist",),
    **_each("HAND FINGER THUMB", ("hand",)),
    "UPPEREXTREMITY": _UPPER,
    "HIP": ("hip", _PELVIS),
    **_each("FEMUR THIGH", ("thigh",)),
    **_each("KNEE PATELLA", ("knee",)),
    "LEG": ("thigh", "knee", "lower leg"),
    **_each("TIBIA FIBULA CALF", ("lower leg",)),
    "ANKLE": ("ankle",),
    **_each("FOOT FEET CALCANEUS TOE", ("foot",)),
    "LOWEREXTREMITY": _LOWER,
    "EXTREMITY": (*_UPPER, *_LOWER),
}


def regions(term: str) -> frozenset[str]:
    """The regions a body part names; empty when it names none this vocabulary knows."""
    joined = re.sub(r"[^A-Z]", "", term.upper())
    if joined in _REGIONS:
        return frozenset(_REGIONS[joined])
    found: set[str] = set()
    for word in re.findall(r"[A-Z]+", term.upper()):
        if word not in _REGIONS and word.endswith("S") and word[:-1] in _REGIONS:
            word = word[:-1]  # LUNGS, RIBS
        found.update(_REGIONS.get(word, ()))
    return frozenset(found)


def body_parts_contradict(examined: str | None, ordered: str | None) -> bool:
    """True when the image's Body Part Examined and the ordered body part name no region in
    common; False when either is missing or names nothing known."""
    if not examined or not ordered:
        return False
    image, order = regions(examined), regions(ordered)
    return bool(image) and bool(order) and not image & order
