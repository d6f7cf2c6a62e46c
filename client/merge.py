"""Merging the replicas' answers: each replica's is exact for its own keys, so merging is
concatenation and re-ranking."""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter, itemgetter

from music_analytics.api import mapreduce_pb2, userbehavior_pb2
from music_analytics.services.common.contract import TOP_SONGS, TOP_USERS, top_ranked

__all__ = ["UserResult", "merge_songs", "merge_top_users"]


def merge_songs(answers: list[mapreduce_pb2.CountPlaysResponse]) -> tuple[list, int, int]:
    """The top songs of all replicas (each sent its own top; a song lives on one replica only),
    distinct songs and events counted."""
    songs = [s for a in answers for s in a.top_songs]
    return (
        top_ranked(songs, TOP_SONGS, count=attrgetter("plays"), key=attrgetter("song")),
        sum(a.distinct_songs for a in answers),
        sum(a.events_processed for a in answers),
    )


@dataclass(frozen=True, slots=True)
class UserResult:
    """One user's line of the results (slots: there are hundreds of thousands of them)."""

    user_id: str
    total_time: int
    top_artist: str


def merge_top_users(answers: list[userbehavior_pb2.AnalyzeUsersResponse]) -> tuple[list[tuple[str, int]], int]:
    """The most active users of all replicas and the events they counted, from each replica's
    final message (every user's summary is taken as it arrives: listening.UserStatsSink)."""
    tops: list[tuple[str, int]] = []
    events = 0
    for a in answers:
        if a.WhichOneof("payload") == "top_users":
            tops.extend(zip(a.top_users.user_ids, a.top_users.total_time, strict=True))
            events += a.events_processed
    return top_ranked(tops, TOP_USERS, count=itemgetter(1), key=itemgetter(0)), events
