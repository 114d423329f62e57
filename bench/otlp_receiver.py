"""A minimal OTLP/gRPC logs receiver: the baseline's collector.

Counts log records; when ``--expect`` records have arrived it prints
``done <time.monotonic()>`` and keeps serving until stdin closes.
Not part of auditlake: only the benchmark's point of comparison.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from concurrent import futures

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc


class Receiver(logs_service_pb2_grpc.LogsServiceServicer):  # type: ignore[misc]
    def __init__(self, expect: int) -> None:
        self.expect = expect
        self.count = 0
        self.lock = threading.Lock()

    def Export(self, request, context):  # noqa: N802, ANN001, ANN201
        n = sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)
        with self.lock:
            self.count += n
            if self.count >= self.expect and self.expect > 0:
                print(f"done {time.monotonic()}", flush=True)
                self.expect = 0
        return logs_service_pb2.ExportLogsServiceResponse()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--expect", type=int, required=True)
    a = p.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Receiver(a.expect), server)
    server.add_insecure_port(f"127.0.0.1:{a.port}")
    server.start()
    print("ready", flush=True)
    sys.stdin.read()
    server.stop(0)


if __name__ == "__main__":
    main()
