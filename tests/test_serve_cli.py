"""`stl-bench serve` start-up: one-line errors before Ray starts, and the written Ray Serve config."""
from __future__ import annotations

import socket

import pytest
import yaml

from stl_bench.cli import main


def test_missing_model_file_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:  # refused while parsing the flags
        main(["serve", str(tmp_path / "nope.pth"), "--port", "8123"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stl-bench serve: error: argument source: model file") and "does not exist" in err
    assert "\n" not in err


def test_port_in_use_is_one_line(tiny_checkpoint, tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "m.pt", seed=0)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert main(["serve", str(ckpt), "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is already in use" in err and "--port" in err


@pytest.mark.parametrize("flags, words", [
    (["--max-batch", "0"], "--max-batch"),
    (["--replicas", "0"], "--replicas"),
    (["--port", "70000"], "--port"),
    (["--batch-wait-ms", "-1"], "--batch-wait-ms"),
])
def test_bad_flags_are_one_line(tiny_checkpoint, tmp_path, capsys, flags, words):
    ckpt = tiny_checkpoint(tmp_path / "m.pt", seed=0)
    with pytest.raises(SystemExit) as exc:  # refused while parsing the flags
        main(["serve", str(ckpt), *flags])
    assert exc.value.code == 2
    assert words in capsys.readouterr().err


def test_auth_disabled_is_refused_for_the_embedded_instance(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    ckpt = tiny_checkpoint(tmp_path / "m.pt", seed=0)
    assert main(["serve", str(ckpt), "--port", "8124"]) == 1
    assert "RAY_AUTH_MODE=disabled" in capsys.readouterr().err


def test_write_config_is_a_valid_ray_serve_config(tiny_checkpoint, tmp_path, capsys):
    pytest.importorskip("ray.serve")
    from ray.serve.schema import ServeDeploySchema

    from stl_bench.serve.deployment import build_app

    ckpt = tiny_checkpoint(tmp_path / "m.pt", seed=0)
    out = tmp_path / "serve.yaml"
    assert main(["serve", str(ckpt), "--write-config", str(out), "--replicas", "3", "--cpus-per-replica", "2",
                 "--max-batch", "24", "--port", "9000"]) == 0
    assert "serve deploy" in capsys.readouterr().out
    config = yaml.safe_load(out.read_text())
    schema = ServeDeploySchema.model_validate(config) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(config)
    app = schema.applications[0]
    assert app.import_path == "stl_bench.serve.deployment:build_app"
    assert config["http_options"] == {"host": "127.0.0.1", "port": 9000}
    args = app.args
    assert args["source"] == str(ckpt.resolve()) and args["replicas"] == 3 and args["max_batch"] == 24
    application = build_app(args)  # what `serve deploy` calls with these args
    deployment = application._bound_deployment
    assert deployment.num_replicas == 3 and deployment.ray_actor_options["num_cpus"] == 2


def test_serve_help_explains(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = capsys.readouterr().out
    for words in ("Ray Serve", "--max-batch", "--address", "--write-config", "/v1/predict"):
        assert words in text
