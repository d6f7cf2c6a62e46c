"""gRPC services: one shared bootstrap (common/) and one folder per service."""
