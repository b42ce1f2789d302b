"""The allow-list of what the viewer fronts pass to Orthanc (sidecar/viewer/paths.py): the
routes of the DICOMweb plugin 1.7 it lets through and those it does not, the refusals, the
studies a request targets (sidecar/viewer/targets.py), and nginx's configuration holding the
very same rules. Both fronts run the shared hostile list for real in
tests/viewer/test_viewer_proxy.py and tests/viewer/test_viewer_deployment.py, and the
quarantine in tests/viewer/test_viewer_quarantine.py."""

from __future__ import annotations

import re
import time

import pytest

from sidecar.launcher.nginx import NGINX_CONF
from sidecar.viewer.paths import (
    FORWARDED_REQUEST_HEADERS,
    HOST,
    METHOD_OVERRIDE_HEADERS,
    RULES,
    Verdict,
    nginx_maps,
    request_target,
    verdict,
)
from sidecar.viewer.targets import UncheckableTarget, targeted_studies

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
    target = SAMPLE.fill(probe.target)
    decided = verdict(target)
    overridden = any(name.lower() in METHOD_OVERRIDE_HEADERS for name in probe.headers)
    hosts = [value for name, value in probe.headers.items() if name.lower() == "host"]
    if overridden:
        assert decided is Verdict.FORWARD  # refused for its header, on an allowed path
    elif hosts:
        assert decided is Verdict.FORWARD  # refused for its Host, on an allowed path
        assert not re.fullmatch(HOST, hosts[0])
    elif probe.method != "GET":
        assert decided is not Verdict.ELSEWHERE
    elif decided is Verdict.FORWARD:
        # An allowed path whose study cannot be checked (sidecar.viewer.targets).
        assert probe.status == 400
        with pytest.raises(UncheckableTarget):
            targeted_studies(target)
    else:
        assert decided.value == str(probe.status), decided


@pytest.mark.parametrize("probe", POSITIVE, ids=lambda probe: str(probe.why))
def test_what_the_viewer_asks_for_passes(probe: Probe) -> None:
    assert verdict(SAMPLE.fill(probe.target)) is Verdict.FORWARD


def test_the_study_is_found_in_every_allowed_path_that_names_one() -> None:
    for target, expected in PLUGIN_1_7_ROUTES:
        if expected is Verdict.FORWARD and target != "/wado":
            named = target.startswith("/dicom-web/studies/")
            assert targeted_studies(target) == ({STUDY} if named else set()), target


@pytest.mark.parametrize("probe", POSITIVE, ids=lambda probe: str(probe.why))
def test_what_the_viewer_asks_for_names_its_study_or_none(probe: Probe) -> None:
    studies = targeted_studies(SAMPLE.fill(probe.target))
    assert studies <= {STUDY}
    assert (studies == {STUDY}) == (STUDY in SAMPLE.fill(probe.target))


OTHER = "1.2.826.0.1.3680043.8.498.99"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        # QIDO: the filter under its keyword or its tag, in any case.
        (f"/dicom-web/studies?StudyInstanceUID={STUDY}", {STUDY}),
        (f"/dicom-web/series?StudyInstanceUID={STUDY}&limit=5", {STUDY}),
        (f"/dicom-web/instances?0020000D={STUDY}", {STUDY}),
        (f"/dicom-web/instances?0020000d={STUDY}", {STUDY}),
        (f"/dicom-web/studies?studyinstanceuid={STUDY}", {STUDY}),
        # Lists: commas, backslashes (raw or encoded), which the plugin removes (`1.2\3` is
        # 1.23 to it): both readings.
        (f"/dicom-web/studies?StudyInstanceUID={STUDY},{OTHER}", {STUDY, OTHER}),
        (f"/dicom-web/studies?StudyInstanceUID={STUDY}%2C{OTHER}", {STUDY, OTHER}),
        (f"/dicom-web/studies?StudyInstanceUID={STUDY}%2c{OTHER}", {STUDY, OTHER}),
        ("/dicom-web/studies?StudyInstanceUID=1.2%5C3", {"1.2", "3", "1.23"}),
        ("/dicom-web/studies?StudyInstanceUID=1.2%5c3", {"1.2", "3", "1.23"}),
        ("/dicom-web/studies?StudyInstanceUID=1.2\\3,4", {"1.2", "3", "4", "1.23"}),
        # Repeated, and beside the path's study: all of them.
        (f"/dicom-web/series?StudyInstanceUID={STUDY}&StudyInstanceUID={OTHER}", {STUDY, OTHER}),
        (f"/dicom-web/studies/{OTHER}/series?StudyInstanceUID={STUDY}", {STUDY, OTHER}),
        (f"/dicom-web/studies/{OTHER}/metadata?0020000D={STUDY}", {STUDY, OTHER}),
        # A universal match, and searches by anything else: no study.
        ("/dicom-web/studies?StudyInstanceUID=", set()),
        ("/dicom-web/studies?StudyInstanceUID&limit=1", set()),
        (f"/dicom-web/series?SeriesInstanceUID={STUDY}", set()),
        (f"/dicom-web/studies?PatientID={STUDY}", set()),
        (f"/dicom-web/studies?00400275.0020000D={STUDY}", set()),
        # WADO-URI: studyUID, however often.
        (f"/wado?requestType=WADO&studyUID={STUDY}&objectUID=1.2", {STUDY}),
        (f"/wado?requestType=WADO&studyUID={STUDY}&studyUID={OTHER}&objectUID=1", {STUDY, OTHER}),
        (f"/wado?studyUID={STUDY}&StudyUID={OTHER}&objectUID=1", {STUDY, OTHER}),
        # The front's own pages name none.
        (f"/viewer?StudyInstanceUIDs={STUDY}", set()),
        ("/", set()),
    ],
)
def test_the_studies_a_request_targets(target: str, expected: set[str]) -> None:
    assert verdict(target) in (Verdict.FORWARD, Verdict.ELSEWHERE)
    assert targeted_studies(target) == expected


@pytest.mark.parametrize(
    "target",
    [
        # Not UIDs: escapes, wildcards, ranges, spaces, signs.
        f"/dicom-web/studies?StudyInstanceUID={STUDY}*",
        f"/dicom-web/studies?StudyInstanceUID=%31{STUDY}",
        f"/dicom-web/studies?StudyInstanceUID={STUDY}%2E1",
        f"/dicom-web/studies?StudyInstanceUID={STUDY}+",
        f"/dicom-web/studies?StudyInstanceUID={STUDY},",
        f"/dicom-web/studies?StudyInstanceUID=,{STUDY}",
        f"/dicom-web/studies?StudyInstanceUID={STUDY}%252C{OTHER}",
        "/dicom-web/studies?StudyInstanceUID=?",
        f"/dicom-web/series?0020000D={STUDY}-{OTHER}",
        f"/dicom-web/studies/{STUDY}/series?StudyInstanceUID=x",
        # WADO-URI without a study Orthanc would compare the instance's with.
        "/wado",
        "/wado?requestType=WADO&objectUID=1.2&contentType=application/dicom",
        "/wado?requestType=WADO&seriesUID=1.2&objectUID=1.2",
        "/wado?requestType=WADO&studyUID=&objectUID=1.2",
        "/wado?requestType=WADO&studyUID&objectUID=1.2",
        f"/wado?requestType=WADO&studyUID={STUDY}&studyUID=&objectUID=1.2",
        f"/wado?requestType=WADO&StudyUID={STUDY}&objectUID=1.2",
        f"/wado?requestType=WADO&StudyInstanceUID={STUDY}&objectUID=1.2",
        # What the fronts refuse anyway.
        "/dicom-web/%2e%2e/studies",
        "/dicom-web/servers",
    ],
)
def test_a_study_named_other_than_by_uids_is_refused(target: str) -> None:
    with pytest.raises(UncheckableTarget):
        targeted_studies(target)


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("viewer.hospital.test", True),
        ("viewer.hospital.test:8443", True),
        ("127.0.0.1:8080", True),
        ("[::1]:8080", True),
        ("[fe80::1]", True),
        ('evil.example";host=x;proto=javascript', False),
        ("a.test;proto=https", False),
        ("a.test,b.test", False),
        ("a.test:8443:1", False),
        ("a.test:123456", False),
        ("a test", False),
        ("a_b.test", False),
        ("[::1", False),
        ("", False),
        ("a.test\n", False),
    ],
)
def test_a_host_is_a_name_or_address_and_a_port(host: str, allowed: bool) -> None:
    assert (re.fullmatch(HOST, host) is not None) is allowed


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
    # The Host copied into Forwarded is checked, before the session is.
    host_check = lines.index("if ($dicomweb_host_verdict) {")
    assert lines[host_check + 1] == "return 400;"
    assert host_check < lines.index("auth_request /_viewer_session;")
    # The session check's 403 that means 400 is answered 400.
    assert "auth_request_set $viewer_refusal $upstream_http_x_viewer_refusal;" in lines
    assert "error_page 403 = @viewer_refused;" in lines


def _map(conf: str, head: str) -> list[tuple[str, str]]:
    block = conf[conf.index(head) :]
    return re.findall(r'^    "~(.*)" (\S+);$', block[: block.index("}\n")], re.MULTILINE)


def test_nginx_sends_the_session_check_the_target_and_keeps_only_answers_from_the_path() -> None:
    """The session check is sent $request_uri, from which the sidecar finds the studies
    (sidecar.viewer.targets); an answer kept for a credential and $viewer_study must not depend
    on anything else, so only DICOMweb targets without a query are kept."""
    conf = NGINX_CONF.read_text()
    session_check = _location(conf, "location = /_viewer_session {")
    assert "proxy_set_header X-Viewer-Path $request_uri;" in session_check
    assert "proxy_cache_bypass $viewer_session_uncached;" in session_check
    assert "proxy_no_cache $viewer_session_uncached;" in session_check
    assert '$cookie_viewer_session|$viewer_study";' in session_check
    [(kept_pattern, kept)] = _map(conf, "map $request_uri $viewer_session_uncached {")
    [(study_pattern, _)] = _map(conf, "map $request_uri $viewer_study {")
    assert kept == '""'
    targets = [SAMPLE.fill(probe.target) for probe in (*POSITIVE, *HOSTILE)] + [
        target for target, _ in PLUGIN_1_7_ROUTES
    ]
    for target in targets:
        if not re.search(kept_pattern, target) or verdict(target) is not Verdict.FORWARD:
            continue
        assert "?" not in target
        in_path = re.search(study_pattern.replace("(?<", "(?P<"), target)  # PCRE's names
        assert targeted_studies(target) == ({in_path.group("uid")} if in_path else set()), target
    assert not re.search(kept_pattern, f"/dicom-web/series?StudyInstanceUID={STUDY}")
    assert not re.search(kept_pattern, f"/wado?studyUID={STUDY}")
    refusal = _location(conf, "location @viewer_refused {")
    assert "if ($viewer_refusal = 400) {" in refusal


def test_nginx_refuses_before_choosing_a_location() -> None:
    conf = NGINX_CONF.read_text()
    server = conf[conf.index("server {") :]
    first_location = server.index("    location ")
    checks = server[:first_location]
    assert "if ($dicomweb_verdict = 400) {" in checks
    assert "if ($dicomweb_verdict = 404) {" in checks
