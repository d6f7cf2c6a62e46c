"""The three services by their command-line names."""

from __future__ import annotations

from music_analytics.services.common.server import ServiceSpec
from music_analytics.services.mapreduce.servicer import SPEC as MAPREDUCE
from music_analytics.services.recommendation.servicer import SPEC as RECOMMENDATION
from music_analytics.services.userbehavior.servicer import SPEC as USERBEHAVIOR

SERVICES: dict[str, ServiceSpec] = {spec.name: spec for spec in (MAPREDUCE, USERBEHAVIOR, RECOMMENDATION)}
