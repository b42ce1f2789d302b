"""The allow-list of what the viewer fronts pass to Orthanc (sidecar/viewer/paths.py): the
routes of the DICOMweb plugin 1.7 it lets through and those it does not, the refusals, and
nginx's configuration holding the very same rules. Both fronts run the shared hostile list for
real in tests/viewer/test_viewer_proxy.py and tests/viewer/test_viewer_deployment.py."""

from __future__ import annotations

import re
import time

import pytest

from sidecar.launcher.nginx import NGINX_CONF
from sidecar.viewer.access import study_in_path
from sidecar.viewer.paths import (
    FORWARDED_REQUEST_HEADERS,
    METHOD_OVERRIDE_HEADERS,
    RULES,
    Verdict,
    nginx_maps,
    request_target,
    verdict,
)

from hostile_paths import HOSTILE, POSITIVE, SAMPLE, Probe

STUDY, SERIES, SOP = SAMPLE.study_uid, SAMPLE.series_uid, SAMPLE.sop_uid
INSTANCE = f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{SOP}"

# Every route the DICOMweb plugin 1.7 registers (Plugin/Plugin.cpp, OrthancDicomWeb-1.7), with
# sample values, and what the fronts do with a GET of it.
PLUGIN_1_7_ROUTES = [
    ("/dicom-web/studies", Verdict.FORWARD),
    (f"/dicom-web/studies/{STUDY}", Verdict.FORWARD),
    ("/dicom-web/instances", Verdict.FORWARD),
    ("/dicom-web/series", Verdict.FORWARD),
    (f"/dicom-web/studies/{STUDY}/instances", Verdict.FORWARD),
    (f"/dicom-web/studies/{STUDY}/metadata", Verdict.FORWARD),
    (f"/dicom-web/studies/{STUDY}/series", Verdict.FORWARD),
    (f"/dicom-web/studies/{STUDY}/series/{SERIES}", Verdict.FORWARD),
    (f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances", Verdict.FORWARD),
    (INSTANCE, Verdict.FORWARD),
    (f"{INSTANCE}/bulk/7fe00010", Verdict.FORWARD),
    (f"{INSTANCE}/metadata", Verdict.FORWARD),
    (f"/dicom-web/studies/{STUDY}/series/{SERIES}/metadata", Verdict.FORWARD),
    # All frames at once: not a DICOMweb URL (a frame list is required); OHIF never asks.
    (f"{INSTANCE}/frames", Verdict.NOT_ALLOWED),
    (f"{INSTANCE}/frames/1", Verdict.FORWARD),
    ("/dicom-web/servers", Verdict.NOT_ALLOWED),
    ("/dicom-web/servers/pacs", Verdict.NOT_ALLOWED),
    ("/dicom-web/servers/pacs/stow", Verdict.NOT_ALLOWED),
    ("/dicom-web/servers/pacs/wado", Verdict.NOT_ALLOWED),
    ("/dicom-web/servers/pacs/get", Verdict.NOT_ALLOWED),
    ("/dicom-web/servers/pacs/retrieve", Verdict.NOT_ALLOWED),
    ("/dicom-web/servers/pacs/qido", Verdict.NOT_ALLOWED),
    ("/dicom-web/servers/pacs/delete", Verdict.NOT_ALLOWED),
    ("/dicom-web/app/libs/jquery.js", Verdict.NOT_ALLOWED),
    ("/dicom-web/info", Verdict.NOT_ALLOWED),
    (f"/dicom-web/studies/{STUDY}/rendered", Verdict.FORWARD),
    (f"/dicom-web/studies/{STUDY}/series/{SERIES}/rendered", Verdict.FORWARD),
    (f"{INSTANCE}/rendered", Verdict.FORWARD),
    (f"{INSTANCE}/frames/1/rendered", Verdict.FORWARD),
    ("/dicom-web/app/client/index.html", Verdict.NOT_ALLOWED),
    ("/wado", Verdict.FORWARD),
]


@pytest.mark.parametrize(("target", "expected"), PLUGIN_1_7_ROUTES)
def test_the_plugins_read_routes_pass_and_its_client_routes_do_not(
    target: str, expected: Verdict
) -> None:
    assert verdict(target) is expected


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        # Frame lists, bulk data in sequences, queries.
        (f"{INSTANCE}/frames/1,2,30", Verdict.FORWARD),
        (f"{INSTANCE}/frames/1,", Verdict.NOT_ALLOWED),
        (f"{INSTANCE}/bulk/00540016/1/00181072", Verdict.FORWARD),
        (f"{INSTANCE}/bulk/00540016/0/00181072", Verdict.NOT_ALLOWED),
        (f"{INSTANCE}/bulk/00540016/1", Verdict.NOT_ALLOWED),
        (f"{INSTANCE}/bulk/7FE00010", Verdict.FORWARD),
        ("/dicom-web/studies?", Verdict.FORWARD),
        ("/dicom-web/studies?PatientName=DOE%5EJANE*&limit=5", Verdict.FORWARD),
        ("/dicom-web/studies?00100010=a&00400275.00321060=b&fuzzymatching", Verdict.FORWARD),
        ("/dicom-web/studies?PatientName=%26_method%3DDELETE", Verdict.FORWARD),
        ("/dicom-web/studies?a=1&", Verdict.MALFORMED),
        ("/dicom-web/studies?Patient_Name=x", Verdict.MALFORMED),
        ("/dicom-web/studies?a%3D1", Verdict.MALFORMED),
        ("/dicom-web/servers?_method=DELETE", Verdict.NOT_ALLOWED),
        # UIDs: digits and dots, starting with a digit, at most 64 characters.
        ("/dicom-web/studies/" + "1" * 64, Verdict.FORWARD),
        ("/dicom-web/studies/" + "1" * 65, Verdict.NOT_ALLOWED),
        ("/dicom-web/studies/.1", Verdict.NOT_ALLOWED),
        ("/dicom-web/studies/..", Verdict.MALFORMED),
        # The rest of the front: not for Orthanc, but no path that nginx would rewrite.
        ("/", Verdict.ELSEWHERE),
        ("/viewer?StudyInstanceUIDs=1.2.3", Verdict.ELSEWHERE),
        ("/login?next=%2Fviewer%3FStudyInstanceUIDs%3D1.2", Verdict.ELSEWHERE),
        ("/app.bundle.0123abcd.js", Verdict.ELSEWHERE),
        ("/dicom-webx", Verdict.NOT_ALLOWED),
        ("/assets/%2e%2e/x", Verdict.MALFORMED),
        ("/assets/x/..", Verdict.MALFORMED),
        ("*", Verdict.MALFORMED),
        ("", Verdict.MALFORMED),
        ("/dicom-web/studies?PatientName=DOE JANE", Verdict.MALFORMED),
        ("/dicom-web/studies\n", Verdict.MALFORMED),
        ("/dicom-web/stüdies", Verdict.MALFORMED),
    ],
)
def test_verdicts(target: str, expected: Verdict) -> None:
    assert verdict(target) is expected


@pytest.mark.parametrize("probe", HOSTILE, ids=lambda probe: str(probe.why))
def test_every_hostile_request_is_refused_by_the_rules(probe: Probe) -> None:
    decided = verdict(SAMPLE.fill(probe.target))
    overridden = any(name.lower() in METHOD_OVERRIDE_HEADERS for name in probe.headers)
    if overridden:
        assert decided is Verdict.FORWARD  # refused for its header, on an allowed path
    elif probe.method == "GET":
        assert decided.value == str(probe.status), decided
    else:
        assert decided is not Verdict.ELSEWHERE


@pytest.mark.parametrize("probe", POSITIVE, ids=lambda probe: str(probe.why))
def test_what_the_viewer_asks_for_passes(probe: Probe) -> None:
    assert verdict(SAMPLE.fill(probe.target)) is Verdict.FORWARD


def test_the_audit_finds_the_study_in_every_allowed_path_that_names_one() -> None:
    for target, expected in PLUGIN_1_7_ROUTES:
        if expected is Verdict.FORWARD:
            named = target.startswith("/dicom-web/studies/")
            assert study_in_path(target) == (STUDY if named else None), target


def test_long_targets_are_decided_at_once() -> None:
    """The rules are linear: no pattern backtracks badly on a long hostile target."""
    targets = [
        "/dicom-web/studies/" + "1." * 5000 + "x",
        "/dicom-web/studies?" + "a=" + "&b=1" * 5000 + "&_",
        f"{INSTANCE}/frames/" + "1," * 5000,
        "/" + "a/" * 5000 + "%",
        "/dicom-web/" + "studies/" * 3000,
    ]
    started = time.perf_counter()
    for target in targets:
        assert verdict(target) is not Verdict.FORWARD
    assert time.perf_counter() - started < 0.5


def test_request_target_is_the_raw_path_and_query() -> None:
    assert request_target(b"/dicom-web/%2e%2e/x", b"_method=DELETE") == (
        "/dicom-web/%2e%2e/x?_method=DELETE"
    )
    assert request_target(b"/wado", b"") == "/wado"


# --- nginx's copy ------------------------------------------------------------------------------


def test_nginx_conf_holds_the_rules_verbatim() -> None:
    """Change a rule in sidecar/viewer/paths.py, then paste `python -m sidecar.viewer.paths`
    into viewer/nginx.conf."""
    assert nginx_maps() in NGINX_CONF.read_text()
    # And nothing else of the kind that could drift from it.
    assert NGINX_CONF.read_text().count("$dicomweb_verdict {") == 1


def test_nginx_reads_the_map_keys_as_python_does() -> None:
    """nginx's parser rewrites some backslash escapes in quoted strings; the rules use none, so
    the regular expressions nginx compiles are the ones Python tests."""
    conf = NGINX_CONF.read_text()
    block = conf[conf.index("map $request_uri $dicomweb_verdict {") :]
    block = block[: block.index("}\n")]
    keys = re.findall(r'^    "(~\*?)(.*)" "([0-9a-z]*)";$', block, re.MULTILINE)
    assert [(flag == "~*", pattern, value) for flag, pattern, value in keys] == [
        (rule.ignore_case, rule.pattern, rule.verdict.value) for rule in RULES
    ]
    for _, pattern, _ in keys:
        assert "\\" not in pattern.replace("\\x5c", "")


def _location(conf: str, head: str) -> str:
    start = conf.index(head)
    return conf[start : conf.index("\n    }\n", start)]


@pytest.mark.parametrize("head", ["location /dicom-web/ {", "location = /wado {"])
def test_nginx_passes_orthanc_what_was_checked_and_the_sidecars_headers_only(head: str) -> None:
    block = _location(NGINX_CONF.read_text(), head)
    lines = [line.strip() for line in block.splitlines()]
    assert "if ($dicomweb_verdict != forward) {" in lines
    assert "if ($dicomweb_method_override) {" in lines
    assert "proxy_pass http://orthanc$request_uri;" in lines
    assert "proxy_pass_request_headers off;" in lines
    passed = re.findall(r"proxy_set_header ([A-Za-z-]+) \$http_([a-z_]+);", block)
    client_headers = [name.lower() for name, variable in passed if variable != "host"]
    assert client_headers == list(FORWARDED_REQUEST_HEADERS)
    assert all(name.lower().replace("-", "_") == variable for name, variable in passed)
    others = re.findall(r"proxy_set_header ([A-Za-z-]+) ", block)
    assert sorted(set(others) - {name for name, _ in passed}) == ["Authorization", "Forwarded"]


def test_nginx_refuses_before_choosing_a_location() -> None:
    conf = NGINX_CONF.read_text()
    server = conf[conf.index("server {") :]
    first_location = server.index("    location ")
    checks = server[:first_location]
    assert "if ($dicomweb_verdict = 400) {" in checks
    assert "if ($dicomweb_verdict = 404) {" in checks
