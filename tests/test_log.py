"""CLI logging: third-party INFO hidden unless --verbose, a repeated warning shown once (#20)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator

import pytest

from sgdm_dist.cli import main
from sgdm_dist.utils.log import QUIET_LOGGERS, quiet_third_party, setup_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    saved = {n: logging.getLogger(n).level for n in QUIET_LOGGERS}
    yield
    quiet_third_party(verbose=True)  # drop the clamps, then put the old levels back
    for n, lvl in saved.items():
        logging.getLogger(n).setLevel(lvl)
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    logging.captureWarnings(False)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    # What a library logs after the command line is parsed (e.g. mlflow during a training).
    logging.getLogger("mlflow.tracking.fluent").info("mlflow-info-line")
    logging.getLogger("sgdm_dist.training.loop").info("sgdm-info-line")
    return capsys.readouterr().err


def test_third_party_info_hidden_by_default_shown_with_verbose(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _run(["config", "--help"], capsys)
    assert "sgdm-info-line" in err and "mlflow-info-line" not in err
    err = _run(["--verbose", "config", "--help"], capsys)
    assert "mlflow-info-line" in err and "sgdm-info-line" in err


def test_library_logging_through_the_root_logger_is_quiet_unless_verbose(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """open_clip calls ``logging.info(...)`` (the root logger) when it loads a model."""
    from open_clip import factory

    def root_lines() -> str:  # a root-logger record whose caller is open_clip's own file
        for level, text in ((logging.INFO, "clip-info-line"), (logging.WARNING, "clip-warn-line")):
            record = logging.getLogger().makeRecord(
                "root", level, factory.__file__, 1, text, (), None
            )
            logging.getLogger().handle(record)
        logging.info("our-root-info-line")  # this test file: not a quiet library
        return capsys.readouterr().err

    setup_logging()
    err = root_lines()
    assert "clip-info-line" not in err and "clip-warn-line" in err and "our-root-info-line" in err
    setup_logging(verbose=True)
    assert "clip-info-line" in root_lines()


def test_library_resetting_its_level_on_import_stays_quiet(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging()
    ray = logging.getLogger("ray")
    ray.setLevel(logging.INFO)  # what `import ray` does
    ray.info("ray-info-line")
    ray.warning("ray-warning-line")
    assert "ray-info-line" not in capsys.readouterr().err
    assert ray.level == logging.WARNING


def test_repeated_warning_is_shown_once(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging()
    log = logging.getLogger("sgdm_dist.data")
    for _ in range(3):
        log.warning("same words")
        log.warning("other words")
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # as some libraries do
        logging.captureWarnings(True)
        for _ in range(3):
            warnings.warn("py warning text", UserWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert err.count("same words") == 1 and err.count("other words") == 1
    assert err.count("UserWarning: py warning text") == 1
