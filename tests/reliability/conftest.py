"""Print the reliability suites' figures in pytest's terminal summary.

Each suite writes build/reliability/NAME.json (support.write_results); the figures of this
run are repeated under "reliability figures" at the end of the output, so ``make test``
and the CI log show them without ``-s`` or ``-rA``.
"""

from __future__ import annotations

import json

import pytest

from tests.reliability.support import RESULTS_DIR, WRITTEN


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not WRITTEN:
        return
    terminalreporter.section("reliability figures")
    for name, figures in sorted(WRITTEN.items()):
        terminalreporter.write_line(f"[reliability] {name}: {json.dumps(figures, sort_keys=True)}")
    terminalreporter.write_line(f"(also in {RESULTS_DIR}/)")
