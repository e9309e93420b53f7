"""Sends logs and metrics to Weir with the OpenTelemetry SDK's OTLP/HTTP exporters.

    pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-http
    OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:8080 python examples/opentelemetry/export.py 100

Log records land in the topic `logs`, data points in `metrics` (the node makes both on first
use). With --admin-token on the node, set OTEL_EXPORTER_OTLP_HEADERS=Authorization=Bearer%20<token>.
"""

import logging
import sys

from opentelemetry import metrics
from opentelemetry._logs import set_logger_provider
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

count = int(sys.argv[1]) if len(sys.argv) > 1 else 10
resource = Resource.create({"service.name": "checkout", "deployment.environment": "example"})

# Logs: the standard logging module, through the SDK's handler.
logger_provider = LoggerProvider(resource=resource)
logger_provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
set_logger_provider(logger_provider)
log = logging.getLogger("checkout.payments")
log.addHandler(LoggingHandler(logger_provider=logger_provider))
log.setLevel(logging.INFO)

# Metrics: a counter and a histogram, exported when the provider shuts down.
reader = PeriodicExportingMetricReader(OTLPMetricExporter(), export_interval_millis=60_000)
metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))
meter = metrics.get_meter("checkout.payments")
payments = meter.create_counter("payments", unit="1", description="Payments tried")
latency = meter.create_histogram("payment_latency", unit="ms")

for i in range(count):
    failed = i % 5 == 0
    if failed:
        log.error("payment %d failed", i, extra={"payment.id": i, "amount": 9.5})
    else:
        log.info("payment %d done", i, extra={"payment.id": i, "amount": 9.5})
    payments.add(1, {"result": "failed" if failed else "done"})
    latency.record(10 + i % 7)

logger_provider.force_flush()
logger_provider.shutdown()
metrics.get_meter_provider().shutdown()
print(f"exported {count} log records")
