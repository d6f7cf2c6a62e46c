"""The client pipeline and the music-analytics command line."""
