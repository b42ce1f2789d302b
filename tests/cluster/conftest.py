"""A failed cluster test shows the tail of every node's logs (launcher and Orthanc): what each
node did is in its own processes, not in the test's."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from cluster_nodes import ClusterNode


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.failed:
        return
    nodes: list[ClusterNode] = []
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, ClusterNode):
            nodes.append(value)
        nodes.extend(n for n in getattr(value, "nodes", ()) if isinstance(n, ClusterNode))
    for node in dict.fromkeys(nodes):
        report.sections.append((f"node {node.name} logs", node.log_tail()))
