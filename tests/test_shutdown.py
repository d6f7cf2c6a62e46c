"""SIGTERM during a stream: health goes NOT_SERVING at once, the in-flight call still completes."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from music_analytics.api import mapreduce_pb2, mapreduce_pb2_grpc
from music_analytics.client.demo import start_service
from music_analytics.client.encoding import encode_batch
from tests.support.events import good_table


def test_sigterm_drains_in_flight_stream(tmp_path):
    service = start_service("mapreduce", tmp_path / "mapreduce.log")
    try:
        service.wait_serving()
        request = mapreduce_pb2.CountPlaysRequest.FromString(encode_batch(good_table(5)))
        first_sent = threading.Event()
        release = threading.Event()

        def requests():
            yield request
            first_sent.set()
            release.wait(20)  # the stream stays open across the SIGTERM
            yield request

        with grpc.insecure_channel(service.address) as channel:
            stub = mapreduce_pb2_grpc.MapReduceServiceStub(channel)
            future = stub.CountPlays.future(requests(), timeout=30)
            assert first_sent.wait(10)
            time.sleep(0.3)
            service.process.send_signal(signal.SIGTERM)
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 10
            status = None
            while time.monotonic() < deadline:
                try:
                    status = health.Check(
                        health_pb2.HealthCheckRequest(service="music.v1.MapReduceService"), timeout=1
                    ).status
                except grpc.RpcError:
                    status = None  # the server may refuse new calls while draining
                if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                time.sleep(0.05)
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert service.process.poll() is None, "server exited before the in-flight stream finished"
            release.set()
            reply = future.result(timeout=20)
        assert reply.events_processed == 10
        assert service.process.wait(20) == 0
        log = (tmp_path / "mapreduce.log").read_text()
        assert '"message": "signal received"' in log and '"message": "stopped"' in log
    finally:
        service.stop()


def test_sigterm_keeps_serving_new_calls_for_the_shutdown_delay(tmp_path):
    """A pod is removed from Endpoints only after SIGTERM: new calls still arrive for a while.

    With no call in flight the service must neither exit nor refuse them before the delay is
    over; health says NOT_SERVING all along, so readiness drops at once.
    """
    delay = 2.0
    service = start_service("mapreduce", tmp_path / "mapreduce.log", shutdown_delay=delay)
    try:
        service.wait_serving()
        request = mapreduce_pb2.CountPlaysRequest.FromString(encode_batch(good_table(3)))
        with grpc.insecure_channel(service.address) as channel:
            stub = mapreduce_pb2_grpc.MapReduceServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            signalled = time.monotonic()
            service.process.send_signal(signal.SIGTERM)
            answered = 0
            while time.monotonic() - signalled < delay - 0.5:
                status = health.Check(
                    health_pb2.HealthCheckRequest(service="music.v1.MapReduceService"), timeout=1
                ).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    continue  # the signal is not handled yet
                assert status == health_pb2.HealthCheckResponse.NOT_SERVING
                # A call that arrives now, as one routed by a stale kube-proxy rule would, is answered.
                assert stub.CountPlays(iter([request]), timeout=5).events_processed == 3
                answered += 1
                time.sleep(0.1)
            assert answered >= 3
            assert service.process.poll() is None, "exited before the shutdown delay was over"
        assert service.process.wait(20) == 0
        assert time.monotonic() - signalled >= delay
        log = (tmp_path / "mapreduce.log").read_text()
        assert '"shutdown_delay_seconds": 2.0' in log
    finally:
        service.stop()


def test_sigterm_that_lands_on_a_grpc_thread_still_stops_the_service(tmp_path):
    """The kernel hands a process's SIGTERM to any of its threads that does not block it; Python
    runs the handler in the main thread only. Sent by thread id (Linux prefers that thread)."""
    service = start_service("userbehavior", tmp_path / "userbehavior.log")
    try:
        service.wait_serving()
        pid = service.process.pid
        threads = {int(tid): (Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip())
                   for tid in os.listdir(f"/proc/{pid}/task") if int(tid) != pid}  # fmt: skip
        # gRPC's own threads (its event engine, timers), which run no Python.
        grpc_threads = [tid for tid, name in threads.items() if name.startswith(("event_engine", "grpc"))]
        assert grpc_threads, threads
        os.kill(grpc_threads[0], signal.SIGTERM)
        assert service.process.wait(20) == 0
        log = (tmp_path / "userbehavior.log").read_text()
        assert '"message": "signal received"' in log and '"message": "stopped"' in log
    finally:
        service.stop()
