"""Configuration: YAML file < environment < flags, and bad values stop the
agent at start with a message naming the setting (no privileges needed:
`run --check-config` resolves and prints without tracing)."""
from __future__ import annotations

import yaml
from click.testing import CliRunner

from agent.runtime.cli import main


def resolve(args, env=None, config_text=None, tmp_path=None):
    if config_text is not None:
        path = tmp_path / "agent.yaml"
        path.write_text(config_text)
        args = ["--config", str(path), *args]
    result = CliRunner().invoke(main, ["run", "--check-config", *args], env=env or {})
    return result


def test_defaults():
    result = resolve([])
    assert result.exit_code == 0, result.output
    settings = yaml.safe_load(result.output)
    assert settings["capture_bytes"] == 2048
    assert settings["exporter"] == "auto"
    assert settings["metrics_address"] == "127.0.0.1:9464"
    assert settings["keep_error_spans"] is True


def test_flag_beats_env_beats_file(tmp_path):
    config = "capture_bytes: 1024\nexporter: console\nring-buffer-size: 32M\nport: [8080, 9090]\n"
    from_file = yaml.safe_load(resolve([], config_text=config, tmp_path=tmp_path).output)
    assert from_file["capture_bytes"] == 1024 and from_file["exporter"] == "console"
    assert from_file["ring_buffer_size"] == 32 << 20 and from_file["ports"] == [8080, 9090]

    env = {"OTEL_EBPF_CAPTURE_BYTES": "4096"}
    from_env = yaml.safe_load(resolve([], env=env, config_text=config, tmp_path=tmp_path).output)
    assert from_env["capture_bytes"] == 4096 and from_env["exporter"] == "console"

    from_flag = yaml.safe_load(resolve(["--capture-bytes", "512"], env=env, config_text=config,
                                       tmp_path=tmp_path).output)
    assert from_flag["capture_bytes"] == 512


def test_bad_values_name_the_setting_and_the_allowed_values(tmp_path):
    result = resolve(["--capture-bytes", "10"])
    assert result.exit_code != 0 and "--capture-bytes" in result.output and "64<=x<=8192" in result.output
    result = resolve(["--exporter", "kafka"])
    assert result.exit_code != 0 and "'auto', 'console', 'otlp', 'none'" in result.output
    result = resolve([], env={"OTEL_EBPF_HOOKS": "uprobe"})
    assert result.exit_code != 0 and "--hooks" in result.output
    result = resolve(["--ring-buffer-size", "lots"])
    assert result.exit_code != 0 and "not a size" in result.output
    result = resolve([], config_text="capture_byte: 1\n", tmp_path=tmp_path)
    assert result.exit_code != 0 and "unknown setting 'capture_byte'" in result.output


def test_every_command_declares_the_options_its_function_takes():
    """A decorator added to the wrong command only fails when that command runs."""
    import inspect
    for name, command in main.commands.items():
        declared = {p.name for p in command.params if p.expose_value}
        accepted = set(inspect.signature(command.callback).parameters)
        assert declared == accepted, (name, declared ^ accepted)


def test_a_stop_signal_that_arrives_during_the_first_does_not_hang_the_agent():
    """The signal handler calls request_stop(); a second signal is handled
    by the same thread, possibly while the first is inside Event.set()."""
    import threading

    from agent.runtime.agent import Agent, AgentConfig

    agent = Agent(AgentConfig())

    class SecondSignalDuringSet(threading.Event):
        def set(self):
            with self._cond:
                self._flag = True
                agent.request_stop()          # the second handler, same thread
                self._cond.notify_all()

    agent._stop = SecondSignalDuringSet()
    stopping = threading.Thread(target=agent.request_stop, daemon=True)
    stopping.start()
    stopping.join(2.0)
    assert not stopping.is_alive(), "request_stop() deadlocked on its own Event lock"
    assert agent._stop.is_set()


def test_http_exchanges_takes_a_mode_or_stands_alone(tmp_path):
    def mode(args, env=None, config_text=None):
        result = resolve(args, env=env, config_text=config_text, tmp_path=tmp_path)
        assert result.exit_code == 0, result.output
        return yaml.safe_load(result.output)["http_exchanges"]
    assert mode([]) == "off"
    assert mode(["--http-exchanges"]) == "on"
    assert mode(["--http-exchanges", "--port", "80"]) == "on"
    assert mode(["--http-exchanges", "by-load"]) == "by-load"
    assert mode(["--http-exchanges=off"]) == "off"
    assert mode([], env={"OTEL_EBPF_HTTP_EXCHANGES": "1"}) == "on"
    assert mode([], config_text="http-exchanges: true\n") == "on"
    assert mode([], config_text="http-exchanges: by-load\n") == "by-load"
    bad = resolve(["--http-exchanges", "sometimes"])
    assert bad.exit_code != 0 and "not one of off, on, by-load" in bad.output
