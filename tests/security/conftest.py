import pytest

from tests.security import report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if report.RESULTS:
        terminalreporter.section("security outcomes")
        terminalreporter.write_line(report.table())
