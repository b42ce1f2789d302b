"""Detection and false-alarm rates of the built-in `quality` analyzer, per check, on a generated
set of studies with injected defects (tests/support/quality_images.py; no Orthanc, no database).

Clean studies carry the hard cases a naive check flags: backgrounds clamped to black, shutters
painted white, dense bone, a hand on the detector, mammograms with small breasts, CT padding and
metal, MONOCHROME1, signed and odd bit depths, deviation indices of +-2.9 and +-3.0, a
secondary capture and a dose report beside the images, orders spelt in other words (THORAX,
"Left hand", a PET order with its CT). Defects come in several kinds and severities each.

A defect is detected when the analyzer reports its check on the image built with it (for the
order and image-count checks, anywhere in the study built with it); a false alarm is a finding
of a check on an image (or study) built without that defect. The second part prints the
measures the blank and clipped thresholds rest on (sidecar/analyses/quality_pixels.py): the
largest value clean images reach and the smallest defective images reach, and the defects
missed.

    PYTHONPATH=. .venv/bin/python bench/quality_detection.py [--seed 19]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# This checkout's sidecar, whichever one the virtual environment was installed from.
sys.path[:0] = [str(REPO), str(REPO / "tests" / "support")]

from pydicom import Dataset  # noqa: E402

from sidecar.analyses.findings import AnalyzerFinding  # noqa: E402
from sidecar.analyses.quality import (  # noqa: E402
    CHECK_BLANK,
    CHECK_BODY_PART,
    CHECK_CLIPPED,
    CHECK_COUNT,
    CHECK_MODALITY,
    CHECKS,
    QualityAnalyzer,
)
from sidecar.analyses.quality_pixels import (  # noqa: E402
    clipping,
    exposed_field,
    flatness,
    pixel_layout,
)

from quality_images import Case, ImageFactory, StudyBuilder  # noqa: E402

STUDY_CHECKS = (CHECK_MODALITY, CHECK_BODY_PART, CHECK_COUNT)
Labels = dict[str, str]  # SOP Instance UID: how the defect was made


Options = dict[str, Any]  # a builder method's keyword arguments


def clean_studies(factory: ImageFactory) -> list[Case]:
    cases = []
    chests: list[tuple[str, list[Options]]] = [
        ("CHEST", [{}, {"dark_background": True}]),
        ("THORAX", [{"dark_background": True, "collimation": True}, {"dense_bone": True}]),
        ("Chest PA", [{"monochrome1": True, "dark_background": True, "collimation": True}]),
        ("CHEST", [{"bits": 10, "dark_background": True}, {"bits": 15}]),
        ("LUNGS", [{"dense_bone": True, "dark_background": True, "collimation": True}]),
        ("CHEST", [{"deviation_index": 2.9}, {"deviation_index": -3.0}]),
        ("CHEST", [{"deviation_index": -2.9}, {"deviation_index": 3.0}]),
        ("CHEST", [{"deviation_index": None, "collimation": True}, {"monochrome1": True}]),
        ("CHEST", [{"collimation": "oblique"}, {"collimation": "oblique", "bits": 16}]),
        ("CHEST", [{"dark_background": True, "collimation": "oblique", "monochrome1": True}]),
    ]
    for k, (ordered, variants) in enumerate(chests):
        study = factory.study(
            f"clean chest {k}", ordered_modality="CR" if k % 2 else "DX", ordered_body_part=ordered
        )
        for options in variants:
            study.chest(modality="DX" if k % 3 else "CR", **options)
        cases.append(study.case(performed=len(variants)))
    for k, ordered in enumerate(("HAND", "Left hand", "UPPEREXTREMITY")):
        study = factory.study(f"clean hand {k}", ordered_modality="DX", ordered_body_part=ordered)
        for view in range(3):
            study.hand(monochrome1=k == 2, bits=14 if view == 1 else 12)
        cases.append(study.case(performed=3))
    for k in range(4):
        study = factory.study(f"clean mammo {k}", ordered_modality="MG", ordered_body_part="BREAST")
        for view in range(4):
            extent = (
                (0.35, 0.45, 0.6, 0.8)[view] if k == 0 else float(factory.rng.uniform(0.45, 0.8))
            )
            study.mammogram(
                extent=float(extent),
                mlo=view >= 2,
                right=view % 2 == 1,
                bits=(12, 14, 10, 16)[k],
                monochrome1=k == 1,
                deviation_index=float(factory.rng.uniform(-2.5, 2.5)),
            )
        cases.append(study.case(performed=4))
    ct = [
        ("CT", "CHEST", "chest", "unsigned12", False, 10),
        ("CT", "ABDOMEN", "abdomen", "signed16", True, 10),
        ("CT", "HEAD", "head", "signed12", False, 8),
        ("CT", "ABDOMEN PELVIS", "abdomen", "signed12", True, 10),
        ("PT", "WHOLEBODY", "chest", "unsigned12", False, 8),
    ]
    for k, (modality, ordered, region, storage, metal, count) in enumerate(ct):
        study = factory.study(f"clean CT {k}", ordered_modality=modality, ordered_body_part=ordered)
        study.ct_series(
            count,
            region=region,  # type: ignore[arg-type]
            storage=storage,  # type: ignore[arg-type]
            metal=metal,
            body_part="ABDOMENPELVIS" if "PELVIS" in ordered else None,
        )
        if k % 2 == 0:
            study.structured_report()
            study.screen_capture()
        cases.append(study.case(performed=count + (1 if k % 2 == 0 else 0)))
    return cases


def image_defects(factory: ImageFactory, labels: Labels) -> list[Case]:
    """Studies each holding one or two defective images among clean ones."""
    cases = []

    def chest_study(name: str) -> StudyBuilder:
        study = factory.study(name, ordered_modality="CR", ordered_body_part="CHEST")
        study.chest(modality="CR", dark_background=True)
        return study

    def label(ds: Dataset, text: str) -> None:
        labels[str(ds.SOPInstanceUID)] = text

    blanks: list[tuple[str, Options]] = [
        ("uniform black", {"level": 0.0}),
        ("uniform grey", {"level": 0.5}),
        ("uniform 10 bits", {"level": 0.3, "bits": 10}),
        ("noise 0.05%", {"noise": 0.0005}),
        ("noise 0.1%", {"noise": 0.001}),
        ("noise 0.2%", {"noise": 0.002}),
        ("noise 0.3%", {"noise": 0.003}),
        ("noise 0.5%", {"noise": 0.005}),
        ("noise 1%", {"noise": 0.01}),
        ("noise 0.2% + marker", {"noise": 0.002, "marker": True}),
        ("noise 0.5% + marker", {"noise": 0.005, "marker": True}),
        ("noise 0.2% + window", {"noise": 0.002, "window": True}),
        ("mammo noise 0.1%", {"noise": 0.001, "modality": "MG", "body_part": "BREAST"}),
        ("noise 2%", {"noise": 0.02}),
        ("flat field, heel effect", {"flat_field": True, "level": 0.5, "noise": 0.005}),
        ("DX 14 bits noise 0.1%", {"noise": 0.001, "modality": "DX", "bits": 14}),
    ]
    for name, options in blanks:
        if options.get("modality") == "MG":
            study = factory.study(f"blank {name}", ordered_modality="MG")
            study.mammogram()
        else:
            study = chest_study(f"blank {name}")
        label(study.blank(**options), f"blank {name}")
        cases.append(study.case(performed=2))
    clipped: list[tuple[str, Options]] = [
        *((f"chest lungs {share:.0%}", {"clip": share}) for share in (0.1, 0.2, 0.3, 0.5, 0.7)),
        *(
            (f"chest lungs {share:.0%}, dark background", {"clip": share, "dark_background": True})
            for share in (0.2, 0.4, 0.9)
        ),
        ("chest lungs 50%, MONOCHROME1", {"clip": 0.5, "monochrome1": True}),
        ("chest lungs 30%, shutter", {"clip": 0.3, "collimation": True}),
        *((f"chest grey scale x{gain}", {"stretch": gain}) for gain in (1.5, 2.0, 3.0, 4.0)),
    ]
    for name, options in clipped:
        study = chest_study(f"clipped {name}")
        label(study.chest(**options), f"clipped {name}")
        cases.append(study.case(performed=2))
    for name, clip in [
        ("mammo dense 20% white", (0.2, "maximum")),
        ("mammo dense 40% white", (0.4, "maximum")),
        ("mammo dense 70% white", (0.7, "maximum")),
        ("mammo fat 50% black", (0.5, "minimum")),
        ("mammo fat 90% black", (0.9, "minimum")),
    ]:
        study = factory.study(name, ordered_modality="MG", ordered_body_part="BREAST")
        study.mammogram(extent=0.7)
        label(study.mammogram(extent=0.7, clip=clip), f"clipped {name}")  # type: ignore[arg-type]
        cases.append(study.case(performed=2))
    for share in (0.5, 0.9):
        study = factory.study(f"hand {share}", ordered_modality="DX", ordered_body_part="HAND")
        study.hand()
        label(study.hand(clip=share), f"clipped hand soft tissue {share:.0%}")
        cases.append(study.case(performed=2))
    for deviation in (-3.1, -3.5, -4.0, -5.0, -6.0, 3.1, 3.5, 4.0, 5.0, 6.0):
        study = chest_study(f"exposure {deviation}")
        label(study.chest(deviation_index=deviation), f"deviation index {deviation:+.1f}")
        cases.append(study.case(performed=2))
    for k in range(2):
        study = factory.study(f"mammo exposure {k}", ordered_modality="MG")
        deviation = -4.0 if k else 3.3
        label(study.mammogram(deviation_index=deviation), f"mammo deviation {deviation:+.1f}")
        study.mammogram(right=True)
        cases.append(study.case(performed=2))
    for k in range(10):
        if k < 4:
            study = chest_study(f"duplicate chest {k}")
            original = study.chest(modality="CR", collimation=k % 2 == 0)
            copy = study.copy_of(original, new_series=k >= 2)
        elif k < 7:
            study = factory.study(f"duplicate CT {k}", ordered_modality="CT")
            slices = study.ct_series(6, storage="signed16" if k % 2 else "unsigned12")
            copy = study.copy_of(slices[k - 3], new_series=k == 6)
        else:
            study = factory.study(f"duplicate mammo {k}", ordered_modality="MG")
            first = study.mammogram()
            study.mammogram(right=True)
            copy = study.copy_of(first)
        label(copy, f"duplicate {study.name}")
        cases.append(study.case(performed=len(study.images)))
    return cases


def study_defects(factory: ImageFactory) -> list[Case]:
    cases = []
    wrong_modality = [
        ("MR", "CHEST", "ct"),
        ("MRI", "HEAD", "ct head"),
        ("CT", "CHEST", "chest"),
        ("US", "CHEST", "chest"),
        ("MG", None, "chest"),
        ("XA", "CHEST", "ct"),
        ("NM", None, "chest"),
        ("CR", "BREAST", "mammo"),
    ]
    for ordered, part, images in wrong_modality:
        study = factory.study(f"modality {ordered} {images}", ordered_modality=ordered)
        study.ordered_body_part = part
        _fill(study, images)
        cases.append(study.case(performed=len(study.images), contradicts=[CHECK_MODALITY]))
    wrong_part = [
        ("HEAD", "ct", "CHEST"),
        ("ABDOMEN", "chest", "CHEST"),
        ("KNEE", "hand", "HAND"),
        ("FOOT", "hand", "HAND"),
        ("BREAST", "chest", "CHEST"),
        ("LSPINE", "ct", "CSPINE"),
        ("Chest", "ct", "PELVIS"),
        ("CHEST", "mammo", "BREAST"),
    ]
    for ordered, images, examined in wrong_part:
        study = factory.study(f"body part {ordered} {examined}", ordered_body_part=ordered)
        _fill(study, images, examined)
        cases.append(study.case(performed=len(study.images), contradicts=[CHECK_BODY_PART]))
    for missing in (1, 1, 2, 3, 5, 1, 2, 10):
        study = factory.study(
            f"missing {missing}", ordered_modality="CT", ordered_body_part="CHEST"
        )
        study.ct_series(5)
        cases.append(study.case(missing=missing))
    for k, extra in enumerate((-1, -2)):  # more images than MPPS reported is no defect
        study = factory.study(f"extra {k}", ordered_modality="CR", ordered_body_part="CHEST")
        study.chest()
        study.chest(dark_background=True)
        study.chest(collimation=True)
        cases.append(study.case(performed=3 + extra))
    study = factory.study("no MPPS", ordered_modality="CR", ordered_body_part="CHEST")
    study.chest()
    cases.append(study.case(performed=None))
    return cases


def _fill(study: StudyBuilder, images: str, part: str | None = None) -> None:
    if images.startswith("ct"):
        study.ct_series(6, region="head" if images == "ct head" else "chest", body_part=part)
    elif images == "chest":
        study.chest(body_part=part or "CHEST")
        study.chest(body_part=part or "CHEST", dark_background=True)
    elif images == "hand":
        study.hand()
        study.hand()
    else:
        for view in range(4):
            study.mammogram(mlo=view >= 2, right=view % 2 == 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=19)
    args = parser.parse_args()
    factory = ImageFactory(args.seed)
    labels: Labels = {}
    cases = clean_studies(factory) + image_defects(factory, labels) + study_defects(factory)
    analyzer = QualityAnalyzer()
    results: list[tuple[Case, list[AnalyzerFinding]]] = []
    started = time.perf_counter()
    for case in cases:
        results.append((case, analyzer.analyze(iter(case.images), case.context)))
    elapsed = time.perf_counter() - started
    images = sum(1 for case in cases for ds in case.images if "PixelData" in ds)
    print(f"{len(cases)} studies, {images} images (seed {args.seed}); analysed in {elapsed:.1f} s")
    print_rates(results)
    print_measures(results, labels)


def print_rates(results: list[tuple[Case, list[AnalyzerFinding]]]) -> None:
    print()
    print(
        f"{'check':42s} {'unit':6s} {'detected':>12s} {'rate':>6s}"
        f" {'false alarms':>14s} {'rate':>6s}"
    )
    false_alarms: list[str] = []
    for check in CHECKS:
        hits = misses = alarms = quiet = 0
        for case, findings in results:
            flagged = {
                f.image.sop_instance_uid if f.image else "" for f in findings if f.finding == check
            }
            if check in STUDY_CHECKS:
                units = {case.context.study_instance_uid: check in case.study_defects}
                flagged = {case.context.study_instance_uid} if flagged else set()
            else:
                units = {
                    str(ds.SOPInstanceUID): check in case.defects.get(str(ds.SOPInstanceUID), ())
                    for ds in case.images
                    if "PixelData" in ds
                }
            for unit, defective in units.items():
                if defective:
                    hits, misses = hits + (unit in flagged), misses + (unit not in flagged)
                else:
                    alarms, quiet = alarms + (unit in flagged), quiet + (unit not in flagged)
                    if unit in flagged:
                        false_alarms.append(f"{check}: {case.name}")
        unit_name = "study" if check in STUDY_CHECKS else "image"
        print(
            f"{check:42s} {unit_name:6s} {hits:5d}/{hits + misses:<6d} {_rate(hits, hits + misses)}"
            f" {alarms:7d}/{alarms + quiet:<6d} {_rate(alarms, alarms + quiet)}"
        )

    print()
    print("False alarms:" if false_alarms else "No false alarm.")
    for line in false_alarms:
        print(f"  {line}")


def print_measures(results: list[tuple[Case, list[AnalyzerFinding]]], labels: Labels) -> None:
    flat: dict[bool, list[tuple[float, str]]] = defaultdict(list)
    enclosed: dict[bool, list[tuple[float, str]]] = defaultdict(list)
    total: dict[bool, list[tuple[float, str]]] = defaultdict(list)
    missed: list[str] = []
    each: list[str] = []
    for case, findings in results:
        for ds in case.images:
            if "PixelData" not in ds or ds.Modality == "OT":  # not acquisitions
                continue
            uid = str(ds.SOPInstanceUID)
            name = labels.get(uid, case.name)
            checks = case.defects.get(uid, set())
            layout = pixel_layout(ds)
            field = exposed_field(ds.pixel_array, layout)
            flat[CHECK_BLANK in checks].append((flatness(field).ratio, name))
            ends = clipping(field, layout)
            if CHECK_BLANK not in checks and ends:
                enclosed[CHECK_CLIPPED in checks].append((max(c.enclosed for c in ends), name))
                total[CHECK_CLIPPED in checks].append((max(c.total for c in ends), name))
            found = {f.finding for f in findings if f.image and f.image.sop_instance_uid == uid}
            missed.extend(f"{check}: {name}" for check in sorted(checks - found))
            if CHECK_CLIPPED in checks and ends:
                each.append(
                    f"  {'found ' if CHECK_CLIPPED in found else 'MISSED'} "
                    f"enclosed {max(c.enclosed for c in ends):6.3f}  "
                    f"total {max(c.total for c in ends):6.3f}  {name}"
                )
    print()
    print("Measures behind the thresholds (quality_pixels):")
    _spread("blank: structure / noise", flat, defect_below=True)
    _spread("clipped: enclosed share of the anatomy", enclosed)
    _spread("clipped: share of the field at one limit", total)
    print()
    print("Clipped images, one by one (thresholds: enclosed 0.05, total 0.85):")
    print("\n".join(each))
    print()
    print("Defective images missed:" if missed else "No defective image missed.")
    for line in missed:
        print(f"  {line}")


def _spread(
    title: str, values: dict[bool, list[tuple[float, str]]], defect_below: bool = False
) -> None:
    """The clean images' and the defective images' values nearest the threshold."""
    clean = min(values[False]) if defect_below else max(values[False])
    defective = max(values[True]) if defect_below else min(values[True])
    print(f"  {title}")
    nearest = ("smallest", "largest") if defect_below else ("largest", "smallest")
    print(f"    clean images, {nearest[0]:9s}  {clean[0]:8.4f}  ({clean[1]})")
    print(f"    defective, {nearest[1]:12s}  {defective[0]:8.4f}  ({defective[1]})")


def _rate(part: int, whole: int) -> str:
    return f"{100 * part / whole:5.1f}%" if whole else "    - "


if __name__ == "__main__":
    main()
