"""Start-up refusals in-process: each broken model directory or bad setting is a StartupError naming what to fix.

What `bentoml serve` makes of a refusal (one line, exit status 1; the traceback with SERVICE_DEBUG=1) is tested on a
real server in test_service_processes.py; here the checks themselves run, without a server per case.
"""

import json
import shutil

import onnx
import pytest

from devtools import tiny_onnx_models as models
from model_bundle import ModelBundle, StartupError
from monitoring import MonitoringSettings
from settings import Settings, refuse_to_start


def no_directory(path):
    shutil.rmtree(path)


def no_card(path):
    (path / "card.json").unlink()


def no_model(path):
    (path / "model.onnx").unlink()


def corrupt_model(path):
    (path / "model.onnx").write_bytes(b"\x08\x07garbage, not a protobuf")


def truncated_model(path):
    data = (path / "model.onnx").read_bytes()
    (path / "model.onnx").write_bytes(data[: len(data) // 2])


def card_unreadable(path):
    """Unreadable even for root (the tests' user): what a 0600 card is for the image's user."""
    (path / "card.json").unlink()
    (path / "card.json").mkdir()


def card_not_json(path):
    (path / "card.json").write_text('{"task": "regression",')


def edit_card(**changes):
    def edit(path):
        card = json.loads((path / "card.json").read_text())
        card.update(changes)
        (path / "card.json").write_text(json.dumps(card))

    return edit


def model_taking_two_columns(path):
    onnx.save(models.linear_onnx([[1.0], [10.0]], [0.0]), str(path / "model.onnx"))


MODEL_REFUSALS = [
    # (case, how to break a copy of the good 1-feature model directory, words the message must contain)
    ("missing directory", no_directory, ["model directory", "does not exist"]),
    ("missing card", no_card, ["card.json is missing"]),
    ("missing model", no_model, ["model.onnx is missing"]),
    ("corrupt model", corrupt_model, ["not a loadable ONNX model"]),
    ("truncated model", truncated_model, ["not a loadable ONNX model"]),
    ("card not JSON", card_not_json, ["not valid JSON"]),
    ("unreadable card", card_unreadable, ["card.json cannot be read"]),
    ("unknown task", edit_card(task="ranking"), ["card.json is invalid", "task"]),
    ("no features", edit_card(features=[]), ["card.json is invalid", "features"]),
    ("min above max", edit_card(features=[{"name": "x", "min": 2, "max": 1}]), ["min 2.0 > max 1.0"]),
    ("regression without residuals", edit_card(interval=None), ["needs 'interval'"]),
    ("fill values for other features", edit_card(imputation={"method": "median", "values": {"z": 1.0}}),
     ["imputation.values must name exactly the card's features"]),
    ("card/model feature mismatch", model_taking_two_columns, ["card/model mismatch", "1 feature(s)", "2 input column(s)"]),
]

SETTING_REFUSALS = [
    # (environment, words the message must contain)
    ({"SERVICE_MAX_ROWS": "many"}, ["SERVICE_MAX_ROWS must be a positive whole number, got 'many'"]),
    ({"SERVICE_MAX_BODY_BYTES": "1e6"}, ["SERVICE_MAX_BODY_BYTES must be a positive whole number"]),
    ({"SERVICE_INTERVAL_COVERAGE": "1.5"}, ["SERVICE_INTERVAL_COVERAGE must be a number in (0, 1), got '1.5'"]),
    ({"SERVICE_INTERVAL_COVERAGE": "nan"}, ["SERVICE_INTERVAL_COVERAGE must be a number in (0, 1)"]),
    ({"SERVICE_MAX_CONCURRENCY": "0"}, ["SERVICE_MAX_CONCURRENCY must be a positive whole number"]),
    ({"SERVICE_REQUEST_TIMEOUT_S": "soon"}, ["SERVICE_REQUEST_TIMEOUT_S must be a positive whole number"]),
    ({"SERVICE_BODY_TIMEOUT_S": "-1"}, ["SERVICE_BODY_TIMEOUT_S must be a positive whole number"]),
    ({"SERVICE_MAX_UPLOADS": "0"}, ["SERVICE_MAX_UPLOADS must be a positive whole number"]),
    ({"SERVICE_MAX_QUEUE_DELAY_MS": "0.5"}, ["SERVICE_MAX_QUEUE_DELAY_MS must be a positive whole number"]),
    ({"SERVICE_API_TOKEN": "two words"}, ["SERVICE_API_TOKEN must be printable and contain no spaces"]),
    ({"SERVICE_DRIFT": "yes"}, ["SERVICE_DRIFT must be 0 or 1, got 'yes'"]),
    ({"SERVICE_DRIFT_WINDOW_ROWS": "0"}, ["SERVICE_DRIFT_WINDOW_ROWS must be a positive whole number"]),
    ({"SERVICE_REQUEST_LOG_FILES": "ten"}, ["SERVICE_REQUEST_LOG_FILES must be a positive whole number"]),
]


@pytest.mark.parametrize(("case", "breaker", "words"), MODEL_REFUSALS, ids=[r[0] for r in MODEL_REFUSALS])
def test_an_unservable_model_directory_is_refused_by_name(tmp_path, regression_dir, case, breaker, words):
    model_dir = tmp_path / "model"
    shutil.copytree(regression_dir, model_dir)
    breaker(model_dir)
    with pytest.raises(StartupError) as refusal:
        ModelBundle.load(model_dir)
    for word in words:
        assert word in str(refusal.value), f"{case}: {word!r} not in {refusal.value}"


def test_the_good_model_directory_loads(regression_dir):
    assert ModelBundle.load(regression_dir).n_features == 1


@pytest.mark.parametrize(("env", "words"), SETTING_REFUSALS, ids=[next(iter(r[0])) for r in SETTING_REFUSALS])
def test_a_bad_setting_is_refused_by_name(env, words):
    with pytest.raises(StartupError) as refusal:
        Settings.from_env(env)
        MonitoringSettings.from_env(env)
    for word in words:
        assert word in str(refusal.value)


def test_settings_default_when_unset_and_read_what_is_set():
    defaults = Settings.from_env({})
    assert (defaults.max_rows, defaults.max_body_bytes, defaults.coverage, defaults.api_token) == (10_000, 2 * 1024**2, None, None)
    chosen = Settings.from_env({"SERVICE_MAX_ROWS": "5", "SERVICE_INTERVAL_COVERAGE": "0.8", "SERVICE_MODEL_DIR": "/m"})
    assert (chosen.max_rows, chosen.coverage, str(chosen.model_dir)) == (5, 0.8, "/m")
    assert MonitoringSettings.from_env({"SERVICE_DRIFT": "0"}).drift is False


def test_a_refusal_is_one_line_and_exit_status_1_unless_debugging(capsys):
    with pytest.raises(SystemExit) as stopped:
        refuse_to_start(StartupError("SERVICE_MAX_ROWS must be a positive whole number, got 'many'"), {})
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert err == ("service refused to start: StartupError: SERVICE_MAX_ROWS must be a positive whole number, got"
                   " 'many' (SERVICE_DEBUG=1 shows the traceback)\n")
    with pytest.raises(StartupError):
        refuse_to_start(StartupError("x"), {"SERVICE_DEBUG": "1"})
