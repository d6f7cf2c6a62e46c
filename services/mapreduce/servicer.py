"""gRPC adapter for MapReduceService: decode the stream, call the analytics, encode the answer."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from music_analytics.api import mapreduce_pb2, mapreduce_pb2_grpc
from music_analytics.services.common.config import CallLimits
from music_analytics.services.common.contract import MAPREDUCE, TOP_SONGS
from music_analytics.services.common.events import ARTIST, SONG, EventColumns
from music_analytics.services.common.ingest import ingest, returning_memory
from music_analytics.services.common.metrics import ServiceMetrics
from music_analytics.services.common.server import ServiceSpec
from music_analytics.services.mapreduce.analytics import PlayCounter


class MapReduceServicer(mapreduce_pb2_grpc.MapReduceServiceServicer):
    def __init__(self, metrics: ServiceMetrics, limits: CallLimits) -> None:
        self.m = metrics
        self.limits = limits

    def CountPlays(  # noqa: N802 (gRPC method name)
        self, request_iterator: Iterator[mapreduce_pb2.CountPlaysRequest], context: grpc.ServicerContext
    ) -> mapreduce_pb2.CountPlaysResponse:
        with returning_memory():
            counter = PlayCounter()

            def add(batch: EventColumns) -> None:
                artist, song = batch.columns[ARTIST], batch.columns[SONG]
                counter.add_columns(artist.dictionary, artist.indices, song.dictionary, song.indices, batch.plays)

            top_n = ingest(request_iterator, context, self.m, (ARTIST, SONG), add, TOP_SONGS, counter, self.limits)
            top = counter.top(top_n)
            self.m.distinct_keys.labels(self.m.service, "songs").set(counter.distinct_songs)
            return mapreduce_pb2.CountPlaysResponse(
                top_songs=[
                    mapreduce_pb2.SongCount(song=s.song, artist=s.artist, song_id=s.song_id, plays=s.plays) for s in top
                ],
                events_processed=counter.events,
                distinct_songs=counter.distinct_songs,
            )


SPEC = ServiceSpec(
    MAPREDUCE,
    attach=lambda server, metrics, limits: mapreduce_pb2_grpc.add_MapReduceServiceServicer_to_server(
        MapReduceServicer(metrics, limits), server
    ),
)
