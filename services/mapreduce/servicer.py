"""gRPC adapter for MapReduceService: decode the stream, call the analytics, encode the answer."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc

from music_analytics.api import mapreduce_pb2, mapreduce_pb2_grpc
from music_analytics.services.common.columns import InvalidBatchError
from music_analytics.services.common.events import ARTIST, SONG, decode_chunk
from music_analytics.services.common.metrics import ServiceMetrics
from music_analytics.services.common.server import ServiceSpec
from music_analytics.services.mapreduce.analytics import TOP_SONGS, PlayCounter

MAX_TOP = 10_000


class MapReduceServicer(mapreduce_pb2_grpc.MapReduceServiceServicer):
    def __init__(self, metrics: ServiceMetrics) -> None:
        self.m = metrics

    def CountPlays(  # noqa: N802 (gRPC method name)
        self, request_iterator: Iterator[mapreduce_pb2.CountPlaysRequest], context: grpc.ServicerContext
    ) -> mapreduce_pb2.CountPlaysResponse:
        service = self.m.service
        counter = PlayCounter()
        top_n = None
        self.m.inflight.labels(service).inc()
        try:
            for index, request in enumerate(request_iterator):
                if top_n is None:
                    top_n = request.top_n or TOP_SONGS
                    if top_n > MAX_TOP:
                        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"top_n {top_n} exceeds {MAX_TOP}")
                try:
                    batch = decode_chunk(request.events, (ARTIST, SONG))
                except InvalidBatchError as exc:
                    self.m.rejected.labels(service, exc.reason).inc()
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"message {index}: {exc}")
                start = time.perf_counter()
                artist, song = batch.columns[ARTIST], batch.columns[SONG]
                counter.add_columns(artist.dictionary, artist.indices, song.dictionary, song.indices)
                self.m.aggregation.labels(service).observe(time.perf_counter() - start)
                self.m.events.labels(service).inc(batch.rows)
                self.m.batches.labels(service).inc()
                self.m.batch_size.labels(service).observe(batch.rows)
            self.m.distinct_keys.labels(service, "songs").set(counter.distinct_songs)
            top = counter.top(top_n or TOP_SONGS)
        finally:
            self.m.inflight.labels(service).dec()
        return mapreduce_pb2.CountPlaysResponse(
            top_songs=[
                mapreduce_pb2.SongCount(song=s.song, artist=s.artist, song_id=s.song_id, plays=s.plays) for s in top
            ],
            events_processed=counter.events,
            distinct_songs=counter.distinct_songs,
        )


SPEC = ServiceSpec(
    name="mapreduce",
    descriptor=mapreduce_pb2.DESCRIPTOR.services_by_name["MapReduceService"],
    grpc_port=50051,
    metrics_port=9051,
    attach=lambda server, metrics: mapreduce_pb2_grpc.add_MapReduceServiceServicer_to_server(
        MapReduceServicer(metrics), server
    ),
)
