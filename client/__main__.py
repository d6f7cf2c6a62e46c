"""`python -m music_analytics.client` is the `music-analytics` command."""

from music_analytics.client.cli import main

raise SystemExit(main())
