"""`otel-ebpf`: run the agent, or check what this kernel offers."""
from __future__ import annotations

import logging
import os
import signal
import sys

import click
import yaml

from agent import __version__
from agent.runtime.child_process import LOG_FORMAT

_SIZE_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _parse_size(text) -> int:
    text = str(text).strip().lower().removesuffix("ib").removesuffix("b")
    if text and text[-1] in _SIZE_UNITS:
        return int(text[:-1]) * _SIZE_UNITS[text[-1]]
    return int(text)


class SizeType(click.ParamType):
    name = "size"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return _parse_size(value)
        except ValueError:
            self.fail(f"{value!r} is not a size (examples: 4096, 64k, 16M)", param, ctx)


class ExchangesType(click.ParamType):
    """--http-exchanges: off, on, or by-load (booleans' spellings too)."""
    name = "off|on|by-load"
    _SPELLINGS = {"0": "off", "false": "off", "no": "off", "1": "on", "true": "on", "yes": "on"}

    def convert(self, value, param, ctx):
        if isinstance(value, bool):
            value = "on" if value else "off"
        mode = str(value).lower()
        mode = self._SPELLINGS.get(mode, mode)
        if mode not in ("off", "on", "by-load"):
            self.fail(f"{value!r} is not one of off, on, by-load", param, ctx)
        return mode


def _load_config_file(ctx: click.Context, param, path):
    """YAML settings become defaults: flags and environment variables win."""
    if not path:
        return path
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", ctx, param)
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} must hold a mapping of settings", ctx, param)
    # A setting is named as its flag is (port, ring-buffer-size) or as the
    # parameter behind it (ports, ring_buffer_size).
    known = {}
    for option in ctx.command.params:
        if option.name in ("config", "check_config", "duration"):
            continue
        known[option.name] = option.name
        for flag in option.opts:
            known[flag.lstrip("-").replace("-", "_")] = option.name
    normalised = {}
    for key, value in data.items():
        name = known.get(str(key).replace("-", "_"))
        if name is None:
            flags = sorted({k.replace("_", "-") for k, v in known.items() if k != v} |
                           {k.replace("_", "-") for k in known.values()})
            raise click.BadParameter(f"{path}: unknown setting {key!r}; known settings: "
                                     f"{', '.join(flags)}", ctx, param)
        normalised[name] = value
    ctx.default_map = {**(ctx.default_map or {}), **normalised}
    return path


@click.group()
@click.version_option(__version__, prog_name="otel-ebpf")
def main():
    """eBPF zero-instrumentation tracing agent: HTTP spans from the kernel, no code changes."""


def loader_options(command):
    """--loader and --kernel-headers, shared by run and doctor."""
    command = click.option(
        "--kernel-headers", type=click.Path(file_okay=False), default=None,
        envvar="OTEL_EBPF_KERNEL_HEADERS",
        help="Kernel headers for the BCC loader [default: /lib/modules/$(uname -r)/build, "
             "else the newest in /usr/src].")(command)
    return click.option(
        "--loader", type=click.Choice(["auto", "core", "bcc"]), default="auto",
        envvar="OTEL_EBPF_LOADER", show_default=True,
        help="How the kernel programs are built: core (compiled ahead, needs kernel BTF and "
             "Linux 5.17+), bcc (compiled at start against kernel headers), auto (core where "
             "the kernel can load it, else bcc).")(command)


@main.command()
@click.option("--config", type=click.Path(dir_okay=False), callback=_load_config_file,
              is_eager=True, expose_value=False, envvar="OTEL_EBPF_CONFIG",
              help="YAML file of settings (keys are the option names); flags and environment win.")
@click.option("--pid", "pids", type=int, multiple=True, envvar="OTEL_EBPF_PIDS",
              help="Trace only this process (repeatable).")
@click.option("--cgroup", "cgroups", multiple=True, envvar="OTEL_EBPF_CGROUPS",
              help="Trace only processes in this cgroup v2 path or below it (repeatable).")
@click.option("--container", "containers", multiple=True, envvar="OTEL_EBPF_CONTAINERS",
              help="Trace only processes of the container with this id (12+ hex digits; repeatable).")
@click.option("--port", "ports", type=click.IntRange(1, 65535), multiple=True,
              envvar="OTEL_EBPF_PORTS", help="Trace only connections with this local or remote port (repeatable).")
@click.option("--exe", "exes", multiple=True, envvar="OTEL_EBPF_EXES",
              help="Trace only processes whose executable has this name (repeatable).")
@click.option("--exporter", type=click.Choice(["auto", "console", "otlp", "none"]),
              default="auto", envvar="OTEL_EBPF_EXPORTER", show_default=True,
              help="auto: OTLP when OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set, else console.")
@click.option("--otlp-impl", type=click.Choice(["fast", "sdk"]), default="fast",
              envvar="OTEL_EBPF_OTLP_IMPL", show_default=True,
              help="fast: the agent's own OTLP encoder; sdk: the OpenTelemetry SDK exporters.")
@click.option("--capture-bytes", type=click.IntRange(64, 8192), default=2048,
              envvar="OTEL_EBPF_CAPTURE_BYTES", show_default=True,
              help="Payload bytes copied per syscall.")
@click.option("--ring-buffer-size", type=SizeType(), default="16M",
              envvar="OTEL_EBPF_RING_BUFFER_SIZE", show_default=True,
              help="Kernel ring buffer size, a power of two.")
@click.option("--hooks", type=click.Choice(["auto", "fentry", "kprobe", "tracepoint", "raw_tracepoint"]), default="auto",
              envvar="OTEL_EBPF_HOOKS", show_default=True,
              help="Hook family; auto picks the cheapest this kernel offers.")
@loader_options
@click.option("--metrics-address", default="127.0.0.1:9464", envvar="OTEL_EBPF_METRICS_ADDRESS",
              show_default=True, help="host:port for /metrics, /healthz and /readyz; empty to disable.")
@click.option("--redact-query-key", "redact_query_keys", multiple=True,
              envvar="OTEL_EBPF_REDACT_QUERY_KEYS", help="Extra URL query key whose value is redacted.")
@click.option("--sql-text", type=click.Choice(["sanitized", "raw", "off"]), default="sanitized",
              envvar="OTEL_EBPF_SQL_TEXT", show_default=True,
              help="db.query.text: with every literal replaced by ?, as sent (literals can be "
                   "secrets: only where that is allowed), or left out.")
@click.option("--tls/--no-tls", default=True, envvar="OTEL_EBPF_TLS", show_default=True,
              help="Capture TLS plaintext through uprobes on OpenSSL (libssl and static copies).")
@click.option("--route", "routes", multiple=True, envvar="OTEL_EBPF_ROUTES",
              help="Route pattern such as /api/users/{id} or /static/*: matching requests get "
                   "http.route and the span name '{method} {route}' (repeatable).")
@click.option("--keep-error-spans/--no-keep-error-spans", default=True,
              envvar="OTEL_EBPF_KEEP_ERROR_SPANS", show_default=True,
              help="Export error spans even when sampling would drop their trace.")
@click.option("--span-workers", type=click.IntRange(0, 16), default=1,
              envvar="OTEL_EBPF_SPAN_WORKERS", show_default=True,
              help="Processes that build, sample and export spans when the capture loop falls "
                   "behind or the load is heavy (a drained batch of over 1,024 exchanges); "
                   "smaller batches are built in the main process. 0: always there.")
@click.option("--nice", type=click.IntRange(-20, 19), default=0, envvar="OTEL_EBPF_NICE",
              show_default=True,
              help="The agent's scheduling niceness against processes in its own cgroup: above "
                   "0 it yields the CPU to them and counts what it cannot keep up with (and "
                   "stops more slowly on a saturated machine); a negative value needs "
                   "CAP_SYS_NICE. Between cgroups (Kubernetes pods, systemd services) CPU "
                   "requests and CPUWeight decide instead.")
@click.option("--yield-cpu/--no-yield-cpu", default=True, envvar="OTEL_EBPF_YIELD_CPU",
              show_default=True,
              help="Run the agent under SCHED_IDLE while it keeps up, so that a traced process "
                   "waking on a core takes it from the agent at once; the agent takes its "
                   "normal weight back while its ring buffer fills or its loop runs late.")
@click.option("--conntrack/--no-conntrack", default=True, envvar="OTEL_EBPF_CONNTRACK",
              show_default=True,
              help="Resolve NATed client connections (Kubernetes Service addresses) through the "
                   "node's connection tracker, once per new connection: client spans get the "
                   "pod reached as network.peer.address and link to its server span on this "
                   "node. Needs CAP_NET_ADMIN in the host's network namespace.")
@click.option("--request-metrics/--no-request-metrics", default=True,
              envvar="OTEL_EBPF_REQUEST_METRICS", show_default=True,
              help="Request duration histograms (HTTP, gRPC, database) from every exchange, "
                   "before sampling, on /metrics (docs/metrics.md).")
@click.option("--otlp-metrics/--no-otlp-metrics", default=None, envvar="OTEL_EBPF_OTLP_METRICS",
              help="Also send the request metrics by OTLP every OTEL_METRIC_EXPORT_INTERVAL "
                   "ms (default 60000). Default: on when spans go to OTLP.")
@click.option("--metric-series-limit", type=click.IntRange(1, 1_000_000), default=2000,
              envvar="OTEL_EBPF_METRIC_SERIES_LIMIT", show_default=True,
              help="Series per request metric; further ones fold into the "
                   "otel.metric.overflow=true series.")
@click.option("--duration", type=click.FloatRange(min=0), default=None,
              help="Stop after this many seconds (default: run until SIGINT/SIGTERM).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", envvar="OTEL_EBPF_LOG_LEVEL", show_default=True)
@click.option("--check-config", is_flag=True,
              help="Print the resolved settings as YAML and exit without tracing.")
@click.option("--http-exchanges", type=ExchangesType(), default="off", is_flag=False,
              flag_value="on", show_default=True, envvar="OTEL_EBPF_HTTP_EXCHANGES",
              help="Pair HTTP/1.x exchanges in the probes (CO-RE loader; sockets and TLS "
                   "plaintext) and send one record per exchange; what the probes cannot pair "
                   "with certainty takes the payload path. by-load: only while the ring "
                   "buffer fills faster than the agent drains it; copies otherwise.")
def run(pids, cgroups, containers, ports, exes, exporter, otlp_impl, capture_bytes, ring_buffer_size, hooks,
        loader, kernel_headers, metrics_address, redact_query_keys, sql_text, tls, routes, keep_error_spans, span_workers, nice,
        yield_cpu, conntrack, request_metrics, otlp_metrics, metric_series_limit, duration,
        log_level, check_config, http_exchanges):
    """Trace the node (or the selected processes) and export spans."""
    if check_config:
        ctx = click.get_current_context()
        resolved = {name: list(value) if isinstance(value, tuple) else value
                    for name, value in ctx.params.items() if name != "check_config"}
        click.echo(yaml.safe_dump(resolved, sort_keys=True), nl=False)
        return
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format=LOG_FORMAT)
    from agent.capture.kernel_features import ensure_tracefs
    from agent.capture.exchange_records import EXCHANGE_MODES
    from agent.capture.loader import CaptureLoadError
    from agent.runtime.agent import Agent, AgentConfig

    ok, message = ensure_tracefs()
    if not ok:
        logging.warning("%s", message)
    # Before any thread or span worker exists, so that all of them inherit it
    # (Linux keeps a niceness per thread).
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as exc:
        raise click.ClickException(f"--nice {nice}: {exc.strerror} (a negative niceness "
                                   "needs CAP_SYS_NICE)")
    config = AgentConfig(pids=set(pids), ports=set(ports), exes=set(exes), cgroups=tuple(cgroups),
                         containers=tuple(containers), exporter=exporter,
                         otlp_impl=otlp_impl, capture_bytes=capture_bytes,
                         ring_buffer_bytes=ring_buffer_size, hooks=hooks, loader=loader,
                         kernel_headers=kernel_headers,
                         metrics_address=metrics_address or None,
                         redact_query_keys=tuple(redact_query_keys), sql_text=sql_text, tls=tls,
                         routes=tuple(routes),
                         keep_error_spans=keep_error_spans, span_workers=span_workers,
                         yield_cpu=yield_cpu, conntrack=conntrack, request_metrics=request_metrics,
                         otlp_metrics=otlp_metrics, metric_series_limit=metric_series_limit,
                         http_exchanges=EXCHANGE_MODES[http_exchanges])
    agent = Agent(config)
    try:
        agent.start()
    except (CaptureLoadError, FileNotFoundError, ValueError, OSError) as exc:
        agent.shutdown()
        raise click.ClickException(str(exc))
    signal.signal(signal.SIGTERM, lambda *_: agent.request_stop())
    signal.signal(signal.SIGINT, lambda *_: agent.request_stop())
    logging.info("tracing: %s", agent.describe())
    try:
        agent.run(duration)
    finally:
        agent.shutdown()
        logging.info("stopped")


@main.command()
@click.option("--output", "-o", type=click.Path(dir_okay=False), required=True)
@click.option("--duration", type=click.FloatRange(min=0.1), default=5.0, show_default=True)
@click.option("--pid", "pids", type=int, multiple=True)
@click.option("--port", "ports", type=click.IntRange(1, 65535), multiple=True)
@click.option("--capture-bytes", type=click.IntRange(64, 8192), default=2048, show_default=True)
@click.option("--http-exchanges", is_flag=True, help="Record the probes' HTTP/1.x exchange records.")
def record(output, duration, pids, ports, capture_bytes, http_exchanges):
    """Save raw kernel events to a file for offline replay (tests, benchmarks, bug reports)."""
    import time
    from agent.capture.kernel_features import ensure_tracefs
    from agent.capture.loader import CaptureSettings, load_capture
    from agent.capture.recording import write_records

    ensure_tracefs()
    capture = load_capture(CaptureSettings(capture_bytes=capture_bytes, pids=set(pids) or None,
                                           ports=set(ports) or None, ring_buffer_bytes=64 << 20,
                                           http_exchanges=http_exchanges))
    click.echo(f"recording for {duration:g} s", err=True)   # loaded: load generators may start
    records = []
    deadline = time.monotonic() + duration
    try:
        while time.monotonic() < deadline:
            batch = capture.ring.read_batch(65536)
            records.extend(batch)
            if not batch:
                capture.ring.wait()
        capture.detach()
        records.extend(capture.ring.read_batch(1 << 30))
        lost = sum(stats[1] for stats in capture.probe_stats().values())
    finally:
        capture.close()
    count = write_records(output, records)
    click.echo(f"{count} records written to {output} ({lost} lost in the kernel)")


@main.command()
@loader_options
def doctor(loader, kernel_headers):
    """Report what this kernel offers and which hooks the agent will use."""
    from agent.runtime.doctor import report
    text, ok = report(loader, kernel_headers)
    click.echo(text)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
