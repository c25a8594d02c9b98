"""The engine gauges the daemon reads off an engine's /metrics: the few it maps, found
without parsing the rest of the page (a busy vLLM's runs to hundreds of kilobytes, parsed
on the event loop every 2 s)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
import pytest

from labctl.daemon.metrics import engine_gauges
from labctl.engines.llamacpp import LlamaCppAdapter
from labctl.engines.vllm import VllmAdapter

PAGE = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="Qwen/Qwen3-0.6B"} 7.0
vllm:num_requests_running{engine="1",model_name="Qwen/Qwen3-0.6B"} 5.0
# HELP vllm:num_requests_running_max A name that starts like a wanted one.
# TYPE vllm:num_requests_running_max gauge
vllm:num_requests_running_max{engine="0",model_name="Qwen/Qwen3-0.6B"} 1000.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="a {braced} \\"name\\" vllm:kv_cache_usage_perc 9"} 3.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{le="0.001",model_name="Qwen/Qwen3-0.6B"} 0.0
vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="Qwen/Qwen3-0.6B"} 4.0
vllm:time_to_first_token_seconds_count{model_name="Qwen/Qwen3-0.6B"} 4.0
vllm:time_to_first_token_seconds_sum{model_name="Qwen/Qwen3-0.6B"} 0.25
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="Qwen/Qwen3-0.6B"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="Qwen/Qwen3-0.6B"} 1.5e-1
"""


def full_parse(text: str, names: dict[str, str]) -> dict[str, float]:
    """What parsing the whole page gives: each mapped family's samples summed."""
    out = {}
    for family in text_string_to_metric_families(text):
        target = names.get(family.name)
        if target and family.samples:
            out[target] = sum(s.value for s in family.samples)
    return out


def test_the_mapped_gauges_are_summed_over_their_samples() -> None:
    names = dict(VllmAdapter.metrics)
    got = engine_gauges(PAGE, names)
    assert got == {
        "labctl_engine_requests_running": 12.0,
        "labctl_engine_requests_waiting": 3.0,
        "labctl_engine_kv_cache_usage_ratio": 0.4,
    }
    assert got == full_parse(PAGE, names)


def test_a_page_without_them_gives_nothing_and_other_engines_names_are_not_read() -> None:
    assert engine_gauges(PAGE, dict(LlamaCppAdapter.metrics)) == {}
    assert engine_gauges("<html>not prometheus</html>", dict(VllmAdapter.metrics)) == {}
    assert engine_gauges("", dict(VllmAdapter.metrics)) == {}


def test_llama_server_gauges_without_labels_or_type_lines() -> None:
    page = "llamacpp:requests_processing 2\nllamacpp:requests_deferred 0\nllamacpp:n_busy_slots_per_decode 1\n"
    assert engine_gauges(page, dict(LlamaCppAdapter.metrics)) == {
        "labctl_engine_requests_running": 2.0,
        "labctl_engine_requests_waiting": 0.0,
    }


def test_a_wanted_line_that_is_not_prometheus_is_refused() -> None:
    with pytest.raises(ValueError, match="seven"):
        engine_gauges('vllm:num_requests_running{engine="0"} seven\n', dict(VllmAdapter.metrics))


def test_the_api_servers_cpu_counter_is_read_with_its_total() -> None:
    page = PAGE + (
        "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
        "# TYPE process_cpu_seconds_total counter\n"
        "process_cpu_seconds_total 12.5\n"
        "# HELP process_cpu_seconds_created_by A name that starts like the wanted one.\n"
        "# TYPE process_cpu_seconds_created_by gauge\n"
        "process_cpu_seconds_created_by 99.0\n"
    )
    got = engine_gauges(page, dict(VllmAdapter.metrics))
    assert got["labctl_engine_api_server_cpu_seconds_total"] == 12.5
    assert "labctl_engine_api_server_cpu_seconds_total" not in engine_gauges(
        PAGE, dict(VllmAdapter.metrics)
    )  # several API server processes: vLLM's page has no process metrics


def test_the_daemon_exports_engine_counters_as_counters() -> None:
    from prometheus_client import generate_latest

    from labctl.daemon.metrics import DaemonMetrics

    m = DaemonMetrics()
    m.engine_counters.values["labctl_engine_api_server_cpu_seconds_total"]["chat"] = 3.25
    page = generate_latest(m.registry).decode()
    assert "# TYPE labctl_engine_api_server_cpu_seconds_total counter" in page
    assert 'labctl_engine_api_server_cpu_seconds_total{deployment="chat"} 3.25' in page
    assert "labctl_engine_api_server_cpu_seconds_total gauge" not in page
