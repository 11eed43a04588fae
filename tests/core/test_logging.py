"""``plait.logging.get_logger`` in one process: the state it needs, main_process_only, in_order, levels.

A pretend rank (an accelerator whose plugin places this process at rank 1 of 2) shows what is
logged on a process other than the main one; tests/ddp/test_state_processes.py does the same on
two real processes.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from plait.logging import MultiProcessAdapter, get_logger
from plait.state import PartialState

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))
from state_helpers import fresh_state, pretend  # noqa: F401  (fresh_state: an autouse fixture)

NAME = "plait.tests.logging"


@pytest.fixture(autouse=True)
def restore_levels():
    """The levels get_logger sets (its logger's and the root's) restored after each test."""
    root, own = logging.root.level, logging.getLogger(NAME).level
    yield
    logging.root.setLevel(root)
    logging.getLogger(NAME).setLevel(own)


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == NAME]


def test_logging_before_any_state_is_a_clear_error():
    logger = get_logger(NAME)  # getting one is fine at import time
    assert isinstance(logger, MultiProcessAdapter) and isinstance(logger, logging.LoggerAdapter)
    with pytest.raises(RuntimeError, match=r"PartialState\(\) or plait.Accelerator\(\)"):
        logger.info("too early")


def test_the_main_process_logs_once_with_its_rank_and_the_caller_s_line(caplog):
    caplog.set_level(logging.INFO, logger=NAME)
    PartialState()
    logger = get_logger(NAME)
    logger.info("hello %s", "world")
    logger.log(logging.WARNING, "everyone", main_process_only=False)
    logger.info("in order", in_order=True)
    logger.debug("below the level")
    assert messages(caplog) == ["[RANK 0] hello world", "[RANK 0] everyone", "[RANK 0] in order"]
    assert {Path(record.pathname).name for record in caplog.records} == {Path(__file__).name}


def test_another_rank_logs_only_when_asked(caplog):
    caplog.set_level(logging.INFO, logger=NAME)
    _, plugin = pretend(rank=1, world_size=2)
    logger = get_logger(NAME)
    logger.info("main only")
    logger.warning("main only too")
    assert messages(caplog) == []
    logger.info("from every process", main_process_only=False)
    assert messages(caplog) == ["[RANK 1] from every process"]
    assert plugin.events == []
    logger.info("in rank order", in_order=True)  # main_process_only is ignored: every rank logs, in turn
    assert messages(caplog)[-1] == "[RANK 1] in rank order"
    assert plugin.events == ["barrier", "barrier"]  # one barrier per rank


def test_warning_once(caplog):
    PartialState()
    logger = get_logger(NAME)
    for _ in range(3):
        logger.warning_once("deprecated %s", "x")
    logger.warning_once("another")
    assert messages(caplog) == ["[RANK 0] deprecated x", "[RANK 0] another"]
    assert {Path(record.pathname).name for record in caplog.records} == {Path(__file__).name}


def test_log_level_argument_and_environment(monkeypatch, caplog):
    PartialState()
    logger = get_logger(NAME, log_level="debug")
    assert logger.logger.level == logging.DEBUG and logging.root.level == logging.DEBUG
    logger.debug("shown")
    assert messages(caplog) == ["[RANK 0] shown"]
    monkeypatch.setenv("ACCELERATE_LOG_LEVEL", "error")
    logger = get_logger(NAME)
    assert logger.logger.level == logging.ERROR
    logger.warning("hidden")
    assert messages(caplog) == ["[RANK 0] shown"]
    assert get_logger(NAME, log_level=logging.INFO).logger.level == logging.INFO  # an argument wins


@pytest.mark.parametrize(("source", "words"), [("argument", "log_level='loud'"), ("environment", "ACCELERATE_LOG_LEVEL='loud'")])
def test_an_unknown_level_is_named(monkeypatch, source, words):
    with pytest.raises(ValueError) as caught:
        if source == "argument":
            get_logger(NAME, log_level="loud")
        else:
            monkeypatch.setenv("ACCELERATE_LOG_LEVEL", "loud")
            get_logger(NAME)
    assert words in str(caught.value) and "DEBUG" in str(caught.value)
