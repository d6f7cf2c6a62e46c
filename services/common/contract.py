"""The wire contract's numbers and names, defined once for the services and the client.

``proto/music/v1`` defines the messages; this module holds what a .proto file cannot: the
default ports, the defaults that a zero field stands for, and the bounds every request field is
checked against. The chart's values.yaml repeats the ports (YAML cannot import Python);
tests/test_contract.py checks that it repeats them right.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from music_analytics.api import mapreduce_pb2, recommendation_pb2, userbehavior_pb2

# Largest message either side accepts. A 64k-row batch with long strings stays under ~4 MB;
# 16 MB leaves room without inviting abuse.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

# Defaults for a request field left at 0.
TOP_SONGS = 10
TOP_USERS = 5
TRENDING_SONGS = 5
# Length of each user's top artists and top songs, and of the site-wide top artists.
TOP_PER_USER = 10
TOP_ARTISTS = 10

# Bounds of the request fields (INVALID_ARGUMENT past them).
MAX_TOP_N = 10_000
# Recommendations carry one uint32 bit mask per user: bit j is trending song j.
MAX_TRENDING_N = 32
MAX_CANDIDATES = 100_000
# Event times, seconds since 1970 UTC: from 1900-01-01 up to (not including) 2200-01-01. Outside
# this a time is a broken value, and the time zone tables need a bounded range.
MIN_TIMESTAMP = -2_208_988_800
MAX_TIMESTAMP = 7_258_118_400
# Rows in one EventBatch or PlayEvents message. The client sends 65,536 at most; a message of
# 16 MB cannot hold more than ~1.4M rows of the smallest possible encoding anyway.
MAX_BATCH_ROWS = 1 << 20
# Users in one UserSummaries / UserProfiles / Recommendations message: keeps each far below
# the 4 MB default limit of other gRPC clients.
USERS_PER_MESSAGE = 20_000
MAX_USERS_PER_MESSAGE = 100_000

# Personalized artists per user (ArtistModelSettings.n): the default for 0, and the bound.
PERSONALIZED_N = 10
MAX_PERSONALIZED_N = 100
# (user, artist) entries in one ArtistPlays or ArtistRecommendations message: about 8 MB of numbers,
# half the message limit, whatever the users' history.
ARTIST_ENTRIES_PER_MESSAGE = 1 << 20

HEALTH_SERVICE = "grpc.health.v1.Health"
# How a RESOURCE_EXHAUSTED refusal for capacity (too many calls at once) begins: a client may
# retry it later, unlike a refusal for what the call itself asked.
BUSY_DETAILS_PREFIX = "server busy"

T = TypeVar("T")


@dataclass(frozen=True)
class ServiceContract:
    """One service as the network sees it: its names, its one method and its default ports."""

    name: str  # command-line and log name: "mapreduce"
    descriptor: object  # protobuf ServiceDescriptor
    method_name: str
    grpc_port: int
    metrics_port: int

    @property
    def full_name(self) -> str:
        return self.descriptor.full_name  # type: ignore[attr-defined]

    @property
    def method(self) -> str:
        """The method's path as gRPC sends it: ``/music.v1.MapReduceService/CountPlays``."""
        return f"/{self.full_name}/{self.method_name}"


MAPREDUCE = ServiceContract(
    "mapreduce", mapreduce_pb2.DESCRIPTOR.services_by_name["MapReduceService"], "CountPlays", 50051, 9051
)
USERBEHAVIOR = ServiceContract(
    "userbehavior", userbehavior_pb2.DESCRIPTOR.services_by_name["UserBehaviorService"], "AnalyzeUsers", 50053, 9053
)
RECOMMENDATION = ServiceContract(
    "recommendation",
    recommendation_pb2.DESCRIPTOR.services_by_name["RecommendationService"],
    "Recommend",
    50055,
    9055,
)
# The Recommendation service's second method: personalized artists from every user's plays.
RECOMMEND_ARTISTS_METHOD = f"/{RECOMMENDATION.full_name}/RecommendArtists"
SERVICES: dict[str, ServiceContract] = {s.name: s for s in (MAPREDUCE, USERBEHAVIOR, RECOMMENDATION)}


def top_ranked(items: Iterable[T], n: int, count: Callable[[T], int], key: Callable[[T], str]) -> list[T]:
    """The ``n`` items of highest ``count``, ties by ``key`` ascending: the order every top list
    of the contract promises (top songs, most active users, trending songs)."""
    return sorted(items, key=lambda item: (-count(item), key(item)))[:n]
